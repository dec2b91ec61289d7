//! `natkit showid`: print the node id, creating the key file on first use.

use anyhow::Context;
use natkit_identity::{Keypair, keyfile};

use super::{Cli, key_path};

/// Loads the node's key, creating the key file if it does not exist yet (and
/// saying so on stderr).
pub fn load_or_create_key(cli: &Cli) -> anyhow::Result<Keypair> {
    let path = key_path(cli)?;
    let (key, created) = keyfile::load_or_create(&path).context("cannot load the identity key")?;
    if created {
        eprintln!("natkit: created a new identity key in {}", path.display());
    }
    Ok(key)
}

/// `natkit showid`.
pub fn showid(cli: &Cli) -> anyhow::Result<()> {
    let key = load_or_create_key(cli)?;
    if cli.json {
        let path = key_path(cli)?;
        println!(
            "{}",
            serde_json::json!({
                "event": "showid",
                "node_id": key.node_id(),
                "public_key": key.node_id().to_hex(),
                "key_file": path.display().to_string(),
            })
        );
    } else {
        println!("{}", key.node_id());
    }
    Ok(())
}

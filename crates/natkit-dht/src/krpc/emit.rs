//! Writing [`Message`]s: build the bencode dictionary, then emit it canonically.

use std::collections::BTreeMap;

use super::{ErrorMessage, Kind, Message, PutItem, Query, Response};
use crate::bencode::{self, Value};
use crate::id::{encode_nodes, encode_nodes6, encode_peer};

type Dict = BTreeMap<Vec<u8>, Value>;

fn put(d: &mut Dict, key: &str, value: impl Into<Value>) {
    d.insert(key.as_bytes().to_vec(), value.into());
}

impl Message {
    /// The datagram for this message (canonical bencode). For every `m` returned by
    /// [`super::parse`], `parse(&m.emit()) == Ok(m)`.
    pub fn emit(&self) -> Vec<u8> {
        bencode::emit(&self.to_value())
    }

    /// This message as a bencode dictionary.
    pub fn to_value(&self) -> Value {
        let mut d = Dict::new();
        put(&mut d, "t", self.transaction_id.clone());
        if let Some(v) = &self.version {
            put(&mut d, "v", v.clone());
        }
        if self.read_only {
            put(&mut d, "ro", 1);
        }
        if let Some(ip) = &self.ip {
            put(&mut d, "ip", encode_peer(ip));
        }
        if let Some(t) = &self.address_token {
            put(&mut d, "nkt", t.clone());
        }
        match &self.kind {
            Kind::Query(q) => {
                put(&mut d, "y", "q");
                put(&mut d, "q", q.method());
                put(&mut d, "a", query_args(q));
            }
            Kind::Response(r) => {
                put(&mut d, "y", "r");
                put(&mut d, "r", response_dict(r));
            }
            Kind::Error(ErrorMessage { code, message }) => {
                put(&mut d, "y", "e");
                put(
                    &mut d,
                    "e",
                    vec![Value::Int(*code), Value::Bytes(message.clone())],
                );
            }
        }
        Value::Dict(d)
    }
}

fn query_args(q: &Query) -> Value {
    let mut a = Dict::new();
    match q {
        Query::Ping { id } => put(&mut a, "id", id.0.to_vec()),
        Query::FindNode { id, target } => {
            put(&mut a, "id", id.0.to_vec());
            put(&mut a, "target", target.0.to_vec());
        }
        Query::GetPeers { id, info_hash } => {
            put(&mut a, "id", id.0.to_vec());
            put(&mut a, "info_hash", info_hash.0.to_vec());
        }
        Query::AnnouncePeer {
            id,
            info_hash,
            port,
            token,
            implied_port,
        } => {
            put(&mut a, "id", id.0.to_vec());
            put(&mut a, "info_hash", info_hash.0.to_vec());
            put(&mut a, "port", i64::from(*port));
            put(&mut a, "token", token.clone());
            if *implied_port {
                put(&mut a, "implied_port", 1);
            }
        }
        Query::Get { id, target, seq } => {
            put(&mut a, "id", id.0.to_vec());
            put(&mut a, "target", target.0.to_vec());
            if let Some(seq) = seq {
                put(&mut a, "seq", *seq);
            }
        }
        Query::Put { id, token, item } => {
            put(&mut a, "id", id.0.to_vec());
            put(&mut a, "token", token.clone());
            match item {
                PutItem::Immutable { v } => put(&mut a, "v", v.clone()),
                PutItem::Mutable {
                    k,
                    salt,
                    seq,
                    cas,
                    sig,
                    v,
                } => {
                    put(&mut a, "k", k.to_vec());
                    if let Some(salt) = salt {
                        put(&mut a, "salt", salt.clone());
                    }
                    put(&mut a, "seq", *seq);
                    if let Some(cas) = cas {
                        put(&mut a, "cas", *cas);
                    }
                    put(&mut a, "sig", sig.to_vec());
                    put(&mut a, "v", v.clone());
                }
            }
        }
        Query::Other { args, .. } => return args.clone(),
    }
    Value::Dict(a)
}

fn response_dict(r: &Response) -> Value {
    let mut d = r.extra.clone();
    put(&mut d, "id", r.id.0.to_vec());
    if let Some(nodes) = &r.nodes {
        put(&mut d, "nodes", encode_nodes(nodes));
    }
    if let Some(nodes6) = &r.nodes6 {
        put(&mut d, "nodes6", encode_nodes6(nodes6));
    }
    if let Some(token) = &r.token {
        put(&mut d, "token", token.clone());
    }
    if let Some(values) = &r.values {
        let list = values
            .iter()
            .map(|p| Value::Bytes(encode_peer(p)))
            .collect();
        put(&mut d, "values", Value::List(list));
    }
    if let Some(v) = &r.v {
        put(&mut d, "v", v.clone());
    }
    if let Some(k) = &r.k {
        put(&mut d, "k", k.to_vec());
    }
    if let Some(seq) = r.seq {
        put(&mut d, "seq", seq);
    }
    if let Some(sig) = &r.sig {
        put(&mut d, "sig", sig.to_vec());
    }
    Value::Dict(d)
}

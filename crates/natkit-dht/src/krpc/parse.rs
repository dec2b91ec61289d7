//! Reading datagrams into [`Message`]s. Never panics; see the module docs for the rules.

use std::collections::BTreeMap;

use super::{
    ErrorMessage, Kind, KrpcError, Message, PUBLIC_KEY_BYTES, PutItem, Query, Response,
    SIGNATURE_BYTES,
};
use crate::bencode::{self, Value};
use crate::id::{Id, decode_nodes, decode_nodes6, decode_peer};

type Dict = BTreeMap<Vec<u8>, Value>;

/// Keys of `r` that have a typed field in [`Response`]; the rest go to [`Response::extra`].
const RESPONSE_KEYS: [&[u8]; 9] = [
    b"id", b"nodes", b"nodes6", b"token", b"values", b"v", b"k", b"seq", b"sig",
];

/// Parses one KRPC datagram.
///
/// Errors say how far the datagram got: without a transaction id there is nothing to answer;
/// a [`KrpcError::MalformedQuery`] should be answered with [`KrpcError::reply`] (error 203).
pub fn parse(datagram: &[u8]) -> Result<Message, KrpcError> {
    let top = bencode::parse(datagram)?;
    let d = top.as_dict().ok_or(KrpcError::NotADict)?;
    let transaction_id = d
        .get(b"t".as_slice())
        .and_then(Value::as_bytes)
        .ok_or(KrpcError::MissingTransactionId)?
        .to_vec();
    let version = d
        .get(b"v".as_slice())
        .and_then(Value::as_bytes)
        .map(<[u8]>::to_vec);
    let read_only = d.get(b"ro".as_slice()).and_then(Value::as_int) == Some(1);
    let ip = d
        .get(b"ip".as_slice())
        .and_then(Value::as_bytes)
        .and_then(decode_peer);
    let address_token = d
        .get(b"nkt".as_slice())
        .and_then(Value::as_bytes)
        .filter(|t| !t.is_empty() && t.len() <= super::MAX_ADDRESS_TOKEN_BYTES)
        .map(<[u8]>::to_vec);
    let kind = match d.get(b"y".as_slice()).and_then(Value::as_bytes) {
        Some(b"q") => Kind::Query(parse_query(datagram, d, &transaction_id)?),
        Some(b"r") => Kind::Response(parse_response(datagram, d, &transaction_id)?),
        Some(b"e") => Kind::Error(parse_error(d, &transaction_id)?),
        _ => return Err(KrpcError::UnknownMessageType { transaction_id }),
    };
    Ok(Message {
        transaction_id,
        version,
        read_only,
        ip,
        address_token,
        kind,
    })
}

fn parse_query(datagram: &[u8], d: &Dict, tid: &[u8]) -> Result<Query, KrpcError> {
    let method = d.get(b"q".as_slice()).and_then(Value::as_bytes);
    let bad = |reason: &'static str| KrpcError::MalformedQuery {
        transaction_id: tid.to_vec(),
        method: method.unwrap_or_default().to_vec(),
        reason,
    };
    let method = method.ok_or(bad("`q` missing or not a string"))?;
    let empty = Value::dict();
    let args_value = match d.get(b"a".as_slice()) {
        None => &empty,
        Some(v @ Value::Dict(_)) => v,
        Some(_) => return Err(bad("`a` is not a dictionary")),
    };
    let a = args_value.as_dict().ok_or(bad("`a` is not a dictionary"))?;
    let id = || id_arg(a, b"id").ok_or(bad("`a.id` missing or not 20 bytes"));
    let query = match method {
        b"ping" => Query::Ping { id: id()? },
        b"find_node" => Query::FindNode {
            id: id()?,
            target: id_arg(a, b"target").ok_or(bad("`a.target` missing or not 20 bytes"))?,
        },
        b"get_peers" => Query::GetPeers {
            id: id()?,
            info_hash: id_arg(a, b"info_hash")
                .ok_or(bad("`a.info_hash` missing or not 20 bytes"))?,
        },
        b"announce_peer" => {
            let port = int_arg(a, b"port")
                .map_err(|()| bad("`a.port` is not an integer"))?
                .and_then(|p| u16::try_from(p).ok())
                .ok_or(bad("`a.port` missing or not in 0..=65535"))?;
            let implied_port = int_arg(a, b"implied_port")
                .map_err(|()| bad("`a.implied_port` is not an integer"))?
                .is_some_and(|n| n != 0);
            Query::AnnouncePeer {
                id: id()?,
                info_hash: id_arg(a, b"info_hash")
                    .ok_or(bad("`a.info_hash` missing or not 20 bytes"))?,
                port,
                token: bytes_arg(a, b"token").ok_or(bad("`a.token` missing or not a string"))?,
                implied_port,
            }
        }
        b"get" => Query::Get {
            id: id()?,
            target: id_arg(a, b"target").ok_or(bad("`a.target` missing or not 20 bytes"))?,
            seq: int_arg(a, b"seq").map_err(|()| bad("`a.seq` is not an integer"))?,
        },
        b"put" => {
            let v = a.get(b"v".as_slice()).ok_or(bad("`a.v` missing"))?;
            if !is_verbatim(datagram, b"a", v) {
                return Err(bad("`a.v` is not canonical bencode"));
            }
            let token = bytes_arg(a, b"token").ok_or(bad("`a.token` missing or not a string"))?;
            Query::Put {
                id: id()?,
                token,
                item: put_item(a, v.clone()).map_err(bad)?,
            }
        }
        _ => Query::Other {
            method: method.to_vec(),
            args: args_value.clone(),
        },
    };
    Ok(query)
}

/// The item of a `put`: mutable as soon as any mutable-only key is present, and then it must be
/// complete. (libtorrent stores a `put` with `k`/`sig` but no valid `seq` as an *immutable* item;
/// we refuse it instead.)
fn put_item(a: &Dict, v: Value) -> Result<PutItem, &'static str> {
    let mutable = [b"k".as_slice(), b"sig", b"seq", b"salt", b"cas"]
        .iter()
        .any(|k| a.contains_key(*k));
    if !mutable {
        return Ok(PutItem::Immutable { v });
    }
    let k = fixed_arg::<PUBLIC_KEY_BYTES>(a, b"k").ok_or("`a.k` missing or not 32 bytes")?;
    let sig = fixed_arg::<SIGNATURE_BYTES>(a, b"sig").ok_or("`a.sig` missing or not 64 bytes")?;
    let seq = int_arg(a, b"seq")
        .ok()
        .flatten()
        .ok_or("`a.seq` missing or not an integer")?;
    let cas = int_arg(a, b"cas").map_err(|()| "`a.cas` is not an integer")?;
    let salt = match a.get(b"salt".as_slice()) {
        None => None,
        Some(Value::Bytes(s)) => Some(s.clone()),
        Some(_) => return Err("`a.salt` is not a string"),
    };
    Ok(PutItem::Mutable {
        k,
        salt,
        seq,
        cas,
        sig,
        v,
    })
}

fn parse_response(datagram: &[u8], d: &Dict, tid: &[u8]) -> Result<Response, KrpcError> {
    let bad = |reason: &'static str| KrpcError::MalformedResponse {
        transaction_id: tid.to_vec(),
        reason,
    };
    let r = d
        .get(b"r".as_slice())
        .and_then(Value::as_dict)
        .ok_or(bad("`r` missing or not a dictionary"))?;
    let mut resp = Response::new(id_arg(r, b"id").ok_or(bad("`r.id` missing or not 20 bytes"))?);
    if let Some(nodes) = r.get(b"nodes".as_slice()) {
        let nodes = nodes.as_bytes().ok_or(bad("`r.nodes` is not a string"))?;
        resp.nodes =
            Some(decode_nodes(nodes).map_err(|_| bad("`r.nodes` is not 26-byte records"))?);
    }
    if let Some(nodes6) = r.get(b"nodes6".as_slice()) {
        let nodes6 = nodes6.as_bytes().ok_or(bad("`r.nodes6` is not a string"))?;
        resp.nodes6 =
            Some(decode_nodes6(nodes6).map_err(|_| bad("`r.nodes6` is not 38-byte records"))?);
    }
    if let Some(token) = r.get(b"token".as_slice()) {
        resp.token = Some(
            token
                .as_bytes()
                .ok_or(bad("`r.token` is not a string"))?
                .to_vec(),
        );
    }
    if let Some(values) = r.get(b"values".as_slice()) {
        let list = values.as_list().ok_or(bad("`r.values` is not a list"))?;
        let peers = list
            .iter()
            .map(|p| p.as_bytes().and_then(decode_peer))
            .collect::<Option<Vec<_>>>()
            .ok_or(bad(
                "`r.values` holds an entry that is not a 6- or 18-byte peer",
            ))?;
        resp.values = Some(peers);
    }
    if let Some(v) = r.get(b"v".as_slice()) {
        if !is_verbatim(datagram, b"r", v) {
            return Err(bad("`r.v` is not canonical bencode"));
        }
        resp.v = Some(v.clone());
    }
    if r.contains_key(b"k".as_slice()) {
        resp.k = Some(fixed_arg(r, b"k").ok_or(bad("`r.k` is not 32 bytes"))?);
    }
    resp.seq = int_arg(r, b"seq").map_err(|()| bad("`r.seq` is not an integer"))?;
    if r.contains_key(b"sig".as_slice()) {
        resp.sig = Some(fixed_arg(r, b"sig").ok_or(bad("`r.sig` is not 64 bytes"))?);
    }
    resp.extra = r
        .iter()
        .filter(|(k, _)| !RESPONSE_KEYS.contains(&k.as_slice()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(resp)
}

fn parse_error(d: &Dict, tid: &[u8]) -> Result<ErrorMessage, KrpcError> {
    let bad = |reason: &'static str| KrpcError::MalformedError {
        transaction_id: tid.to_vec(),
        reason,
    };
    let e = d
        .get(b"e".as_slice())
        .and_then(Value::as_list)
        .ok_or(bad("`e` missing or not a list"))?;
    match e {
        [Value::Int(code), Value::Bytes(message), ..] => Ok(ErrorMessage {
            code: *code,
            message: message.clone(),
        }),
        _ => Err(bad("`e` is not [code, message]")),
    }
}

/// Whether `v` (found at `outer.v` of the datagram) was encoded canonically, i.e. whether
/// re-emitting it gives exactly the bytes that were hashed and signed.
fn is_verbatim(datagram: &[u8], outer: &[u8], v: &Value) -> bool {
    let raw = || -> Option<Vec<u8>> {
        let top = bencode::dict_raw_entries(datagram).ok()?;
        let (_, inner) = top.into_iter().find(|(k, _)| *k == outer)?;
        let entries = bencode::dict_raw_entries(inner).ok()?;
        let (_, raw_v) = entries.into_iter().find(|(k, _)| *k == b"v")?;
        Some(raw_v.to_vec())
    };
    raw().is_some_and(|raw| raw == bencode::emit(v))
}

fn id_arg(a: &Dict, key: &[u8]) -> Option<Id> {
    a.get(key)
        .and_then(Value::as_bytes)
        .and_then(Id::from_slice)
}

fn bytes_arg(a: &Dict, key: &[u8]) -> Option<Vec<u8>> {
    a.get(key).and_then(Value::as_bytes).map(<[u8]>::to_vec)
}

fn fixed_arg<const N: usize>(a: &Dict, key: &[u8]) -> Option<[u8; N]> {
    a.get(key).and_then(Value::as_bytes)?.try_into().ok()
}

/// `Ok(None)` when absent, `Err(())` when present but not an integer.
fn int_arg(a: &Dict, key: &[u8]) -> Result<Option<i64>, ()> {
    match a.get(key) {
        None => Ok(None),
        Some(Value::Int(n)) => Ok(Some(*n)),
        Some(_) => Err(()),
    }
}

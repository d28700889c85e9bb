//! The SOPS value cipher: `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` strings,
//! AES-256-GCM with a 32-byte IV and the value's tree path as additional
//! data, and the typed plaintext encodings (`str`, `int`, `float`, `bool`).

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Number, Value};

use crate::{Error, Result};

/// AES-256-GCM with SOPS's 32-byte nonce.
type SopsGcm = AesGcm<Aes256, U32>;

const TAG_LEN: usize = 16;

/// One parsed `ENC[...]` value.
#[derive(Debug)]
pub(crate) struct EncValue<'a> {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    pub(crate) kind: &'a str,
}

/// Parse an `ENC[AES256_GCM,...]` string (the format check the hub runs too).
pub(crate) fn parse(s: &str) -> std::result::Result<EncValue<'_>, String> {
    let inner = s
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| "not an ENC[AES256_GCM,...] value".to_string())?;
    let mut parts = inner.splitn(4, ',');
    let mut field = |name: &str| -> std::result::Result<&str, String> {
        parts
            .next()
            .and_then(|p| p.strip_prefix(name))
            .and_then(|p| p.strip_prefix(':'))
            .ok_or_else(|| format!("missing {name}"))
    };
    let (data, iv, tag, kind) = (field("data")?, field("iv")?, field("tag")?, field("type")?);
    let dec = |what: &str, v: &str| B64.decode(v).map_err(|e| format!("{what} is not base64: {e}"));
    let (data, iv, tag) = (dec("data", data)?, dec("iv", iv)?, dec("tag", tag)?);
    if iv.len() != 32 {
        return Err(format!("iv is {} bytes, not 32", iv.len()));
    }
    if tag.len() != TAG_LEN {
        return Err(format!("tag is {} bytes, not {TAG_LEN}", tag.len()));
    }
    if !matches!(kind, "str" | "int" | "int64" | "float" | "bool" | "bytes" | "comment") {
        return Err(format!("unknown type {kind:?}"));
    }
    Ok(EncValue { data, iv, tag, kind })
}

fn gcm(key: &[u8; 32]) -> SopsGcm {
    SopsGcm::new(key.into())
}

/// Decrypt raw bytes; `None` when authentication fails.
pub(crate) fn open(key: &[u8; 32], v: &EncValue<'_>, aad: &str) -> Option<Vec<u8>> {
    let mut msg = Vec::with_capacity(v.data.len() + TAG_LEN);
    msg.extend_from_slice(&v.data);
    msg.extend_from_slice(&v.tag);
    let nonce = Nonce::<U32>::try_from(v.iv.as_slice()).ok()?;
    gcm(key).decrypt(&nonce, Payload { msg: &msg, aad: aad.as_bytes() }).ok()
}

/// Decrypt one leaf. Returns the typed value and the bytes that go into the
/// MAC (SOPS's `ToBytes` of the typed value).
pub(crate) fn decrypt_value(key: &[u8; 32], s: &str, path: &str) -> Result<(Value, Vec<u8>)> {
    if s.is_empty() {
        // SOPS leaves empty strings as they are.
        return Ok((Value::String(String::new()), Vec::new()));
    }
    let bad = |m: String| Error::Value { path: path.to_string(), message: m };
    let v = parse(s).map_err(bad)?;
    let plain = open(key, &v, path).ok_or_else(|| Error::ValueTampered { path: path.to_string() })?;
    typed(v.kind, plain).map_err(bad)
}

fn typed(kind: &str, plain: Vec<u8>) -> std::result::Result<(Value, Vec<u8>), String> {
    let text = || String::from_utf8(plain.clone()).map_err(|_| format!("a {kind} value is not UTF-8"));
    Ok(match kind {
        "str" | "bytes" => {
            let s = text()?;
            (Value::String(s), plain)
        }
        "int" | "int64" => {
            let i: i64 = text()?.parse().map_err(|_| "an int value does not parse".to_string())?;
            (Value::Number(i.into()), i.to_string().into_bytes())
        }
        "float" => {
            let f: f64 = text()?.parse().map_err(|_| "a float value does not parse".to_string())?;
            (float_value(f)?, go_float(f).into_bytes())
        }
        "bool" => {
            let b = match text()?.as_str() {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                _ => return Err("a bool value does not parse".into()),
            };
            (Value::Bool(b), bool_bytes(b))
        }
        other => return Err(format!("type {other:?} is not supported for values")),
    })
}

/// A float as JSON: integral values as integers (as SOPS's stores emit them).
fn float_value(f: f64) -> std::result::Result<Value, String> {
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        return Ok(Value::Number((f as i64).into()));
    }
    Number::from_f64(f).map(Value::Number).ok_or_else(|| "a float value is not finite".into())
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest decimal that
/// reads back as `f`, never with an exponent (Rust's `Display` does the same).
fn go_float(f: f64) -> String {
    format!("{f}")
}

fn bool_bytes(b: bool) -> Vec<u8> {
    if b { b"True".to_vec() } else { b"False".to_vec() }
}

/// SOPS's `ToBytes` for a plaintext leaf; `None` for null (SOPS skips it).
pub(crate) fn leaf_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Bool(b) => Some(bool_bytes(*b)),
        Value::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string().into_bytes(),
            (None, Some(u), _) => u.to_string().into_bytes(),
            (None, None, Some(f)) => go_float(f).into_bytes(),
            _ => n.to_string().into_bytes(),
        }),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Encrypt one plaintext leaf the way SOPS does (random 32-byte IV).
pub(crate) fn encrypt_value(key: &[u8; 32], v: &Value, path: &str) -> Result<Value> {
    let (kind, bytes) = match v {
        Value::String(s) if s.is_empty() => return Ok(v.clone()),
        Value::String(s) => ("str", s.as_bytes().to_vec()),
        Value::Bool(b) => ("bool", bool_bytes(*b)),
        Value::Number(n) if n.is_i64() || n.is_u64() => ("int", n.to_string().into_bytes()),
        Value::Number(n) => ("float", go_float(n.as_f64().unwrap_or_default()).into_bytes()),
        _ => return Ok(v.clone()),
    };
    Ok(Value::String(seal(key, &bytes, path, kind)))
}

/// Seal bytes into an `ENC[...]` string of the given type.
pub(crate) fn seal(key: &[u8; 32], plain: &[u8], aad: &str, kind: &str) -> String {
    let iv: [u8; 32] = rand::random();
    let nonce = Nonce::<U32>::from(iv);
    let out = gcm(key)
        .encrypt(&nonce, Payload { msg: plain, aad: aad.as_bytes() })
        .expect("AES-GCM encryption of a bounded value cannot fail");
    let (data, tag) = out.split_at(out.len() - TAG_LEN);
    format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        B64.encode(data),
        B64.encode(iv),
        B64.encode(tag)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_their_types_and_path() {
        let key = [7u8; 32];
        for v in [
            serde_json::json!("s3cr3t"),
            serde_json::json!(42),
            serde_json::json!(1.5),
            serde_json::json!(true),
        ] {
            let enc = encrypt_value(&key, &v, "a:b:").unwrap();
            let s = enc.as_str().unwrap();
            let (back, mac) = decrypt_value(&key, s, "a:b:").unwrap();
            assert_eq!(back, v);
            assert_eq!(Some(mac), leaf_bytes(&v));
            // The path is authenticated: moving the value breaks it.
            assert!(matches!(decrypt_value(&key, s, "a:c:"), Err(Error::ValueTampered { .. })));
        }
    }

    #[test]
    fn mac_bytes_follow_sops_to_bytes() {
        assert_eq!(leaf_bytes(&serde_json::json!(true)).unwrap(), b"True");
        assert_eq!(leaf_bytes(&serde_json::json!(false)).unwrap(), b"False");
        assert_eq!(leaf_bytes(&serde_json::json!(1.0)).unwrap(), b"1");
        assert_eq!(leaf_bytes(&serde_json::json!(0.1)).unwrap(), b"0.1");
        assert_eq!(leaf_bytes(&serde_json::json!(1e21)).unwrap(), b"1000000000000000000000");
        assert_eq!(leaf_bytes(&Value::Null), None);
    }

    #[test]
    fn malformed_values_are_named() {
        for bad in ["plain", "ENC[AES256_GCM,data:!!,iv:AA==,tag:AA==,type:str]", "ENC[AES256_GCM,data:AA==]"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}

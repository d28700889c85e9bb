//! The one text form of a label set: `k=v,k2=v2`, sorted by key. Formatting
//! and parsing only; no I/O.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Labels of a cluster.
pub type Labels = BTreeMap<String, String>;

/// `k=v,k2=v2`, sorted by key (whatever the iteration order); empty for no labels.
pub fn format<K, V>(labels: impl IntoIterator<Item = (K, V)>) -> String
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut pairs: Vec<(K, V)> = labels.into_iter().collect();
    pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k.as_ref());
        out.push('=');
        out.push_str(v.as_ref());
    }
    out
}

/// Like [`format`], but `-` for no labels (tables).
pub fn format_or_dash<K, V>(labels: impl IntoIterator<Item = (K, V)>) -> String
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let s = format(labels);
    if s.is_empty() { "-".into() } else { s }
}

/// Parse `k=v,k2=v2` (or several such items, e.g. repeated `--label` flags).
/// Whitespace around keys and values and empty items are ignored; a later
/// key wins. An item without `=` or with an empty key is refused.
pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Labels> {
    let mut labels = Labels::new();
    for item in items {
        for kv in item.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| Error::Selector {
                selector: kv.into(),
                message: "expected key=value".into(),
            })?;
            if k.trim().is_empty() {
                return Err(Error::Selector { selector: kv.into(), message: "empty key".into() });
            }
            labels.insert(k.trim().into(), v.trim().into());
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn format_sorts_and_joins() {
        let h: HashMap<String, String> =
            [("region", "eu"), ("env", "prod")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(format(&h), "env=prod,region=eu");
        assert_eq!(format(Vec::<(&str, &str)>::new()), "");
        assert_eq!(format_or_dash(Vec::<(&str, &str)>::new()), "-");
        assert_eq!(format_or_dash([("a", "1")]), "a=1");
    }

    #[test]
    fn parse_round_trips_and_refuses_bad_items() {
        let l = parse(["env=prod, region=eu ,", "tier=web"]).unwrap();
        assert_eq!(format(&l), "env=prod,region=eu,tier=web");
        assert_eq!(parse([format(&l).as_str()]).unwrap(), l);
        assert_eq!(parse(["a=1,a=2"]).unwrap()["a"], "2");
        assert_eq!(parse(["k="]).unwrap()["k"], "");
        assert!(parse([""]).unwrap().is_empty());
        assert!(parse(["nope"]).is_err());
        assert!(parse(["=x"]).is_err());
    }
}

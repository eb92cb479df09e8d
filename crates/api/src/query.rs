//! Parse queries over JSON objects: `where` with equality, pointers, `$in`,
//! `$nin`, `$ne`, `$lt`, `$lte`, `$gt`, `$gte` (numbers, dates, strings),
//! `$exists`, `$or` and `$and`; `order`, `limit`, `skip`, `count`, `keys`.
//! The same matcher decides LiveQuery events, so a query and a subscription
//! with the same `where` agree.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::error::{ApiResult, ParseError};
use crate::model::parse_iso_date;

/// Parse's default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page served.
pub const MAX_LIMIT: usize = 1000;
/// Largest `skip`.
pub const MAX_SKIP: usize = 100_000;

/// A checked `where` clause.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Where(Map<String, Value>);

const OPERATORS: &[&str] = &[
    "$in", "$nin", "$ne", "$lt", "$lte", "$gt", "$gte", "$exists", "$eq",
];

impl Where {
    /// Checks a `where` value (an object, or a JSON string of one).
    pub fn parse(value: Option<&Value>) -> ApiResult<Where> {
        let map = match value {
            None | Some(Value::Null) => return Ok(Where::default()),
            Some(Value::String(s)) if s.trim().is_empty() => return Ok(Where::default()),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(ParseError::invalid_json(
                        "where must be a JSON object, e.g. {\"name\":\"general\"}",
                    ));
                }
            },
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(ParseError::invalid_json("where must be a JSON object")),
        };
        check(&map, 0)?;
        Ok(Where(map))
    }

    /// The constraints, by field.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Whether `object` matches.
    pub fn matches(&self, object: &Value) -> bool {
        matches_map(&self.0, object)
    }

    /// The objectId an equality on `field` asks for, if any (pointer or
    /// plain string), so the caller can narrow what it scans.
    pub fn equal_id(&self, field: &str) -> Option<String> {
        match self.0.get(field)? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) if o.get("__type").and_then(Value::as_str) == Some("Pointer") => {
                o.get("objectId").and_then(Value::as_str).map(str::to_owned)
            }
            Value::Object(o) => match o.get("$eq") {
                Some(Value::Object(p)) => {
                    p.get("objectId").and_then(Value::as_str).map(str::to_owned)
                }
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }
}

fn check(map: &Map<String, Value>, depth: usize) -> ApiResult<()> {
    if depth > 8 {
        return Err(ParseError::invalid_query("where is nested too deeply"));
    }
    for (field, cond) in map {
        match field.as_str() {
            "$or" | "$and" => {
                let Some(list) = cond.as_array() else {
                    return Err(ParseError::invalid_query(format!(
                        "{field} takes an array of where objects"
                    )));
                };
                if list.len() > 32 {
                    return Err(ParseError::invalid_query(format!(
                        "{field} takes at most 32 clauses"
                    )));
                }
                for c in list {
                    let Some(m) = c.as_object() else {
                        return Err(ParseError::invalid_query(format!(
                            "{field} takes an array of where objects"
                        )));
                    };
                    check(m, depth + 1)?;
                }
            }
            f if f.starts_with('$') => {
                return Err(ParseError::invalid_query(format!(
                    "unsupported where operator {f}: this node supports $or and $and at the top, and {} on fields",
                    OPERATORS.join(", ")
                )));
            }
            _ => {
                if let Value::Object(o) = cond
                    && o.keys().any(|k| k.starts_with('$'))
                {
                    for (op, arg) in o {
                        match op.as_str() {
                            "$in" | "$nin" if !arg.is_array() => {
                                return Err(ParseError::invalid_query(format!(
                                    "{op} on {field} takes an array"
                                )));
                            }
                            "$exists" if !arg.is_boolean() => {
                                return Err(ParseError::invalid_query(format!(
                                    "$exists on {field} takes true or false"
                                )));
                            }
                            "$lt" | "$lte" | "$gt" | "$gte" if comparable(arg).is_none() => {
                                return Err(ParseError::invalid_query(format!(
                                    "{op} on {field} takes a number, a string or a date {{\"__type\":\"Date\",\"iso\":...}}"
                                )));
                            }
                            o if OPERATORS.contains(&o) => {}
                            other => {
                                return Err(ParseError::invalid_query(format!(
                                    "unsupported operator {other} on {field}: this node supports {}",
                                    OPERATORS.join(", ")
                                )));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A value reduced to what comparisons look at.
#[derive(Clone, Debug, PartialEq)]
enum Key {
    Number(f64),
    Text(String),
    Date(i64),
    Bool(bool),
    Pointer(String, String),
    Null,
}

fn comparable(v: &Value) -> Option<Key> {
    match v {
        Value::Number(n) => n.as_f64().map(Key::Number),
        Value::String(s) => Some(match parse_iso_date(s) {
            Some(ms) => Key::Date(ms),
            None => Key::Text(s.clone()),
        }),
        Value::Bool(b) => Some(Key::Bool(*b)),
        Value::Null => Some(Key::Null),
        Value::Object(o) => match o.get("__type").and_then(Value::as_str) {
            Some("Date") => o
                .get("iso")
                .and_then(Value::as_str)
                .and_then(parse_iso_date)
                .map(Key::Date),
            Some("Pointer") => Some(Key::Pointer(
                o.get("className")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                o.get("objectId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            )),
            // An included (expanded) pointer compares as its pointer.
            Some("Object") => Some(Key::Pointer(
                o.get("className")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                o.get("objectId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            )),
            _ => None,
        },
        Value::Array(_) => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (comparable(a), comparable(b)) {
        (Some(x), Some(y)) => match (&x, &y) {
            // A date stored as an ISO string equals a date object.
            (Key::Date(p), Key::Date(q)) => p == q,
            _ => x == y,
        },
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (comparable(a)?, comparable(b)?) {
        (Key::Number(x), Key::Number(y)) => x.partial_cmp(&y),
        (Key::Date(x), Key::Date(y)) => Some(x.cmp(&y)),
        (Key::Text(x), Key::Text(y)) => Some(x.cmp(&y)),
        (Key::Bool(x), Key::Bool(y)) => Some(x.cmp(&y)),
        _ => None,
    }
}

/// Where a value's type sorts among the others: Parse's order of mixed
/// types (MongoDB's: null and missing, numbers, strings, objects,
/// arrays, booleans, dates).
fn type_rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 0,
        Some(v) => match comparable(v) {
            Some(Key::Null) => 0,
            Some(Key::Number(_)) => 1,
            Some(Key::Text(_)) => 2,
            Some(Key::Pointer(..)) => 3,
            Some(Key::Bool(_)) => 5,
            Some(Key::Date(_)) => 6,
            None => match v {
                Value::Array(_) => 4,
                // Any other object.
                _ => 3,
            },
        },
    }
}

/// A total order over every value a field can hold (missing included),
/// for `order`: values of one type compare as that type does, types
/// compare by [`type_rank`], and what has no natural order (plain
/// objects) compares by its JSON text. Total, so no sort can panic on
/// what a client stored.
fn sort_order(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    let (Some(a), Some(b)) = (a, b) else {
        return Ordering::Equal;
    };
    match (comparable(a), comparable(b)) {
        (Some(Key::Number(x)), Some(Key::Number(y))) => x.total_cmp(&y),
        (Some(Key::Text(x)), Some(Key::Text(y))) => x.cmp(&y),
        (Some(Key::Date(x)), Some(Key::Date(y))) => x.cmp(&y),
        (Some(Key::Bool(x)), Some(Key::Bool(y))) => x.cmp(&y),
        (Some(Key::Pointer(c1, i1)), Some(Key::Pointer(c2, i2))) => (c1, i1).cmp(&(c2, i2)),
        (Some(Key::Null), Some(Key::Null)) => Ordering::Equal,
        // Pointers sort before other objects of the same rank.
        (Some(Key::Pointer(..)), None) => Ordering::Less,
        (None, Some(Key::Pointer(..))) => Ordering::Greater,
        (None, None) => match (a, b) {
            // Arrays element by element, a prefix first.
            (Value::Array(x), Value::Array(y)) => {
                for (p, q) in x.iter().zip(y) {
                    let o = sort_order(Some(p), Some(q));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                x.len().cmp(&y.len())
            }
            _ => a.to_string().cmp(&b.to_string()),
        },
        // Same rank means same kind of key; kept total all the same.
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Equality that also matches an element of an array field, as Parse does.
fn field_equals(field: Option<&Value>, want: &Value) -> bool {
    match field {
        None => want.is_null(),
        Some(Value::Array(items)) if !want.is_array() => items.iter().any(|i| equal(i, want)),
        Some(v) => equal(v, want),
    }
}

fn matches_map(map: &Map<String, Value>, object: &Value) -> bool {
    map.iter().all(|(field, cond)| match field.as_str() {
        "$or" => cond.as_array().is_some_and(|l| {
            l.iter()
                .any(|c| c.as_object().is_some_and(|m| matches_map(m, object)))
        }),
        "$and" => cond.as_array().is_some_and(|l| {
            l.iter()
                .all(|c| c.as_object().is_some_and(|m| matches_map(m, object)))
        }),
        _ => {
            let value = object.get(field);
            match cond {
                Value::Object(o) if o.keys().any(|k| k.starts_with('$')) => {
                    o.iter().all(|(op, arg)| match op.as_str() {
                        "$eq" => field_equals(value, arg),
                        "$ne" => !field_equals(value, arg),
                        "$in" => arg
                            .as_array()
                            .is_some_and(|l| l.iter().any(|w| field_equals(value, w))),
                        "$nin" => !arg
                            .as_array()
                            .is_some_and(|l| l.iter().any(|w| field_equals(value, w))),
                        "$exists" => {
                            let present = value.is_some_and(|v| !v.is_null());
                            arg.as_bool() == Some(present)
                        }
                        "$lt" => value.and_then(|v| order(v, arg)) == Some(Ordering::Less),
                        "$lte" => matches!(
                            value.and_then(|v| order(v, arg)),
                            Some(Ordering::Less | Ordering::Equal)
                        ),
                        "$gt" => value.and_then(|v| order(v, arg)) == Some(Ordering::Greater),
                        "$gte" => matches!(
                            value.and_then(|v| order(v, arg)),
                            Some(Ordering::Greater | Ordering::Equal)
                        ),
                        _ => false,
                    })
                }
                want => field_equals(value, want),
            }
        }
    })
}

/// Options of a find, from query parameters (or the JS SDK's body).
#[derive(Clone, Debug, PartialEq)]
pub struct FindOptions {
    /// The `where` clause.
    pub filter: Where,
    /// Sort keys; `-` in front sorts descending.
    pub order: Vec<String>,
    /// Page size.
    pub limit: usize,
    /// Objects to skip.
    pub skip: usize,
    /// Whether to count all matches.
    pub count: bool,
    /// Fields to return (objectId, createdAt and updatedAt always come).
    pub keys: Option<Vec<String>>,
    /// Pointer fields to expand.
    pub include: Vec<String>,
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(as_text)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

fn as_count(v: &Value, what: &str, max: usize) -> ApiResult<usize> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| ParseError::invalid_query(format!("{what} must be a whole number")))?;
    if n < 0 {
        return Err(ParseError::invalid_query(format!(
            "{what} must not be negative"
        )));
    }
    Ok((n as u64).min(max as u64) as usize)
}

fn list(v: Option<&Value>) -> Vec<String> {
    v.and_then(as_text)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl FindOptions {
    /// Reads options from parameters (`where` may be a JSON string).
    pub fn from_params(params: &Map<String, Value>) -> ApiResult<FindOptions> {
        let filter = Where::parse(params.get("where"))?;
        let limit = match params.get("limit") {
            Some(v) => as_count(v, "limit", MAX_LIMIT)?,
            None => DEFAULT_LIMIT,
        };
        let skip = match params.get("skip") {
            Some(v) => as_count(v, "skip", MAX_SKIP)?,
            None => 0,
        };
        let count = match params.get("count") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_i64() == Some(1),
            Some(Value::String(s)) => s == "1" || s == "true",
            Some(_) => return Err(ParseError::invalid_query("count must be 1 or 0")),
        };
        let keys = params.get("keys").map(|v| list(Some(v)));
        Ok(FindOptions {
            filter,
            order: list(params.get("order")),
            limit,
            skip,
            count,
            keys,
            include: list(params.get("include")),
        })
    }

    /// Filters, sorts, counts and pages `objects`; `keys` is applied by the caller
    /// after `include` (see [`project`]). Returns the page and the count.
    pub fn run(&self, mut objects: Vec<Value>) -> (Vec<Value>, usize) {
        objects.retain(|o| self.filter.matches(o));
        let total = objects.len();
        if !self.order.is_empty() {
            objects.sort_by(|a, b| {
                for key in &self.order {
                    let (field, desc) = match key.strip_prefix('-') {
                        Some(f) => (f, true),
                        None => (key.as_str(), false),
                    };
                    let ord = sort_order(a.get(field), b.get(field));
                    let ord = if desc { ord.reverse() } else { ord };
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                Ordering::Equal
            });
        }
        let page = objects
            .into_iter()
            .skip(self.skip)
            .take(self.limit)
            .collect();
        (page, total)
    }
}

/// Keeps only `keys` (and objectId, createdAt, updatedAt, className, __type).
pub fn project(object: &mut Value, keys: &[String]) {
    if let Value::Object(o) = object {
        o.retain(|k, _| {
            matches!(
                k.as_str(),
                "objectId" | "createdAt" | "updatedAt" | "className" | "__type"
            ) || keys
                .iter()
                .any(|want| want == k || want.split('.').next() == Some(k))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(v: Value) -> Where {
        Where::parse(Some(&v)).unwrap()
    }

    #[test]
    fn operators_match_like_parse() {
        let o = json!({
            "name": "general", "n": 5, "tags": ["a", "b"],
            "room": {"__type": "Pointer", "className": "Room", "objectId": "r1"},
            "createdAt": "2024-01-02T03:04:05.006Z"
        });
        assert!(w(json!({"name": "general"})).matches(&o));
        assert!(!w(json!({"name": "other"})).matches(&o));
        assert!(
            w(json!({"room": {"__type": "Pointer", "className": "Room", "objectId": "r1"}}))
                .matches(&o)
        );
        assert!(
            !w(json!({"room": {"__type": "Pointer", "className": "Room", "objectId": "r2"}}))
                .matches(&o)
        );
        assert!(w(json!({"tags": "a"})).matches(&o));
        assert!(w(json!({"n": {"$gt": 4, "$lte": 5}})).matches(&o));
        assert!(!w(json!({"n": {"$lt": 5}})).matches(&o));
        assert!(w(json!({"name": {"$in": ["x", "general"]}})).matches(&o));
        assert!(w(json!({"name": {"$nin": ["x"]}})).matches(&o));
        assert!(w(json!({"name": {"$ne": "x"}})).matches(&o));
        assert!(w(json!({"name": {"$exists": true}, "gone": {"$exists": false}})).matches(&o));
        assert!(
            w(json!({"createdAt": {"$gt": {"__type": "Date", "iso": "2024-01-01T00:00:00.000Z"}}}))
                .matches(&o)
        );
        assert!(
            !w(
                json!({"createdAt": {"$lt": {"__type": "Date", "iso": "2024-01-01T00:00:00.000Z"}}})
            )
            .matches(&o)
        );
        assert!(w(json!({"$or": [{"name": "x"}, {"n": 5}]})).matches(&o));
        assert!(!w(json!({"$and": [{"name": "general"}, {"n": 6}]})).matches(&o));
    }

    #[test]
    fn bad_queries_are_refused_with_102() {
        for bad in [
            json!({"name": {"$regex": "x"}}),
            json!({"$where": "1"}),
            json!({"n": {"$in": 3}}),
            json!({"n": {"$lt": [1]}}),
            json!({"$or": 3}),
        ] {
            assert_eq!(Where::parse(Some(&bad)).unwrap_err().code, 102, "{bad}");
        }
        assert_eq!(Where::parse(Some(&json!("{nope"))).unwrap_err().code, 107);
    }

    /// Every pair of values of mixed types compares consistently: the
    /// order is total (antisymmetric and transitive), so `sort_by` cannot
    /// panic and the result does not depend on the input's order.
    #[test]
    fn sort_order_is_total_over_mixed_types() {
        let values: Vec<Option<Value>> = vec![
            None,
            Some(json!(null)),
            Some(json!(3)),
            Some(json!(-1.5)),
            Some(json!(10)),
            Some(json!("b")),
            Some(json!("a")),
            Some(json!("2024-01-02T03:04:05.006Z")),
            Some(json!({"__type": "Date", "iso": "2023-01-02T03:04:05.006Z"})),
            Some(json!({"__type": "Pointer", "className": "Room", "objectId": "r1"})),
            Some(json!({"x": 1})),
            Some(json!({"__type": "Date"})),
            Some(json!([1, "a"])),
            Some(json!([1])),
            Some(json!([])),
            Some(json!(true)),
            Some(json!(false)),
        ];
        for a in &values {
            for b in &values {
                let ab = sort_order(a.as_ref(), b.as_ref());
                assert_eq!(
                    ab,
                    sort_order(b.as_ref(), a.as_ref()).reverse(),
                    "{a:?} {b:?}"
                );
                for c in &values {
                    let bc = sort_order(b.as_ref(), c.as_ref());
                    if ab != Ordering::Greater && bc != Ordering::Greater {
                        assert_ne!(
                            sort_order(a.as_ref(), c.as_ref()),
                            Ordering::Greater,
                            "{a:?} <= {b:?} <= {c:?}"
                        );
                    }
                }
            }
        }
        // Parse's order of types, ascending.
        let objs: Vec<Value> = [
            json!({"v": true}),
            json!({"v": "x"}),
            json!({}),
            json!({"v": 2}),
            json!({"v": {"__type": "Date", "iso": "2023-01-02T03:04:05.006Z"}}),
            json!({"v": null}),
        ]
        .into_iter()
        .collect();
        let mut params = Map::new();
        params.insert("order".into(), json!("v"));
        let (page, _) = FindOptions::from_params(&params).unwrap().run(objs);
        let kinds: Vec<u8> = page.iter().map(|o| type_rank(o.get("v"))).collect();
        assert_eq!(kinds, vec![0, 0, 1, 2, 5, 6]);
    }

    #[test]
    fn order_limit_skip_count() {
        let objs: Vec<Value> = (0..10)
            .map(|i| json!({"n": i, "odd": i % 2 == 1}))
            .collect();
        let mut params = Map::new();
        params.insert("where".into(), json!("{\"odd\":true}"));
        params.insert("order".into(), json!("-n"));
        params.insert("limit".into(), json!("2"));
        params.insert("skip".into(), json!(1));
        params.insert("count".into(), json!("1"));
        let f = FindOptions::from_params(&params).unwrap();
        let (page, total) = f.run(objs);
        assert_eq!(total, 5);
        assert!(f.count);
        assert_eq!(
            page,
            vec![json!({"n": 7, "odd": true}), json!({"n": 5, "odd": true})]
        );
    }
}

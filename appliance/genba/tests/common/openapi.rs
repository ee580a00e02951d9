//! Checks `/v2` and `/post_v2/` answers against the API's OpenAPI document (the one the bridge
//! serves at `/v2/openapi.json`): every answer a test gets through [`super::http`] is checked.

use serde_json::{json, Value};

const DOC: &str = include_str!("../../../genba-bridge/src/openapi.json");

fn doc() -> &'static Value {
    static DOC_VALUE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC_VALUE.get_or_init(|| serde_json::from_str(DOC).expect("openapi.json is JSON"))
}

/// The document's path template that `path` matches (`/v2/device/{id}` for `/v2/device/d1`).
fn template(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    doc()["paths"].as_object()?.keys().find_map(|t| {
        let ts: Vec<&str> = t.trim_end_matches('/').split('/').collect();
        (ts.len() == segments.len()
            && ts
                .iter()
                .zip(&segments)
                .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b))
        .then_some(t.as_str())
    })
}

fn resolve(v: &Value) -> &Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let mut at = doc();
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            at
        }
        None => v,
    }
}

/// Panics when an answer to `method path` does not match the documented schema.
pub fn check(method: &str, path: &str, status: u16, body: &Value) {
    if !(path.starts_with("/v2/") || path.starts_with("/post_v2")) || path == "/v2/openapi.json" {
        return;
    }
    let Some(t) = template(path) else {
        panic!("{method} {path}: not in openapi.json");
    };
    let op = &doc()["paths"][t][method.to_ascii_lowercase()];
    if op.is_null() {
        // 405 for methods the document does not list; its body is the common error.
        assert_eq!(status, 405, "{method} {path}: not in openapi.json");
        return;
    }
    let responses = &op["responses"];
    let response = resolve(match responses.get(status.to_string()) {
        Some(r) => r,
        None => &responses["default"],
    });
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {status}: no schema in openapi.json"
    );
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": doc()["components"]["schemas"],
        "$ref": "#/$defs/__answer",
    });
    root["$defs"]["__answer"] = schema.clone();
    let text = root
        .to_string()
        .replace("#/components/schemas/", "#/$defs/");
    let root: Value = serde_json::from_str(&text).expect("schema JSON");
    let validator = jsonschema::validator_for(&root).expect("openapi.json schemas compile");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the answer does not match openapi.json: {errors:?}\n{body}"
    );
}

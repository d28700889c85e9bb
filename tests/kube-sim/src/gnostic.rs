//! The protobuf form of an OpenAPI v2 document, as kubectl downloads it
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`): the subset
//! of gnostic's `openapi.v2` messages (field numbers from gnostic's
//! OpenAPIv2.proto) that a Kubernetes document uses, and the conversion of the
//! JSON document into them. Keys the subset does not model are left out.

use prost::Message;
use serde_json::Value;

#[derive(Clone, PartialEq, Message)]
pub struct Document {
    #[prost(string, tag = "1")]
    pub swagger: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Paths {
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedPathItem {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PathItem {
    #[prost(message, optional, tag = "2")]
    pub get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    pub put: Option<Operation>,
    #[prost(message, optional, tag = "4")]
    pub post: Option<Operation>,
    #[prost(message, optional, tag = "5")]
    pub delete: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Operation {
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "5")]
    pub operation_id: String,
    #[prost(string, repeated, tag = "6")]
    pub produces: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub consumes: Vec<String>,
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, optional, tag = "9")]
    pub responses: Option<Responses>,
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    pub parameter: Option<Parameter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Parameter {
    #[prost(message, optional, tag = "2")]
    pub non_body_parameter: Option<NonBodyParameter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueryParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "6")]
    pub r#type: String,
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Responses {
    #[prost(message, repeated, tag = "1")]
    pub response_code: Vec<NamedResponseValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedResponseValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<ResponseValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResponseValue {
    #[prost(message, optional, tag = "1")]
    pub response: Option<Response>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub description: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Definitions {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Schema {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(string, tag = "2")]
    pub format: String,
    #[prost(string, tag = "3")]
    pub title: String,
    #[prost(string, tag = "4")]
    pub description: String,
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    #[prost(double, tag = "7")]
    pub maximum: f64,
    #[prost(double, tag = "9")]
    pub minimum: f64,
    #[prost(int64, tag = "11")]
    pub max_length: i64,
    #[prost(int64, tag = "12")]
    pub min_length: i64,
    #[prost(string, tag = "13")]
    pub pattern: String,
    #[prost(int64, tag = "14")]
    pub max_items: i64,
    #[prost(int64, tag = "15")]
    pub min_items: i64,
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    #[prost(message, optional, boxed, tag = "21")]
    pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    #[prost(message, repeated, tag = "24")]
    pub all_of: Vec<Schema>,
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AdditionalPropertiesItem {
    #[prost(message, optional, tag = "1")]
    pub schema: Option<Schema>,
    #[prost(bool, optional, tag = "2")]
    pub boolean: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Properties {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedAny {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

/// gnostic's Any: a value carried as YAML text (JSON is YAML).
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "2")]
    pub yaml: String,
}

fn any(v: &Value) -> Any {
    Any { yaml: v.to_string() }
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn extensions(v: &Value) -> Vec<NamedAny> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, x)| NamedAny { name: k.clone(), value: Some(any(x)) })
        .collect()
}

/// A JSON schema as gnostic's Schema message.
pub fn schema(v: &Value) -> Schema {
    let num = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    Schema {
        r#ref: s(v, "$ref"),
        format: s(v, "format"),
        title: s(v, "title"),
        description: s(v, "description"),
        default: v.get("default").map(any),
        maximum: num("maximum"),
        minimum: num("minimum"),
        max_length: int("maxLength"),
        min_length: int("minLength"),
        pattern: s(v, "pattern"),
        max_items: int("maxItems"),
        min_items: int("minItems"),
        required: v
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        r#enum: v
            .get("enum")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(any).collect())
            .unwrap_or_default(),
        additional_properties: match v.get("additionalProperties") {
            Some(Value::Bool(b)) => {
                Some(Box::new(AdditionalPropertiesItem { schema: None, boolean: Some(*b) }))
            }
            Some(o @ Value::Object(_)) => {
                Some(Box::new(AdditionalPropertiesItem { schema: Some(schema(o)), boolean: None }))
            }
            _ => None,
        },
        r#type: match v.get("type") {
            Some(Value::String(t)) => Some(TypeItem { value: vec![t.clone()] }),
            Some(Value::Array(a)) => {
                Some(TypeItem { value: a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect() })
            }
            _ => None,
        },
        items: match v.get("items") {
            Some(Value::Array(a)) => Some(ItemsItem { schema: a.iter().map(schema).collect() }),
            Some(o @ Value::Object(_)) => Some(ItemsItem { schema: vec![schema(o)] }),
            _ => None,
        },
        all_of: v
            .get("allOf")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(schema).collect())
            .unwrap_or_default(),
        properties: v.get("properties").and_then(Value::as_object).map(|m| Properties {
            additional_properties: m
                .iter()
                .map(|(k, x)| NamedSchema { name: k.clone(), value: Some(schema(x)) })
                .collect(),
        }),
        vendor_extension: extensions(v),
    }
}

fn operation(v: &Value) -> Operation {
    Operation {
        description: s(v, "description"),
        operation_id: s(v, "operationId"),
        produces: strings(v.get("produces")),
        consumes: strings(v.get("consumes")),
        parameters: v
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| ParametersItem {
                parameter: Some(Parameter {
                    non_body_parameter: Some(NonBodyParameter {
                        query_parameter_sub_schema: Some(QueryParameterSubSchema {
                            required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                            r#in: s(p, "in"),
                            description: s(p, "description"),
                            name: s(p, "name"),
                            r#type: s(p, "type"),
                            unique_items: p.get("uniqueItems").and_then(Value::as_bool).unwrap_or(false),
                        }),
                    }),
                }),
            })
            .collect(),
        responses: v.get("responses").and_then(Value::as_object).map(|m| Responses {
            response_code: m
                .iter()
                .map(|(code, r)| NamedResponseValue {
                    name: code.clone(),
                    value: Some(ResponseValue {
                        response: Some(Response { description: s(r, "description") }),
                    }),
                })
                .collect(),
        }),
        vendor_extension: extensions(v),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The JSON OpenAPI v2 document as gnostic's protobuf Document.
pub fn document(doc: &Value) -> Document {
    let op = |item: &Value, verb: &str| item.get(verb).map(operation);
    Document {
        swagger: s(doc, "swagger"),
        info: doc.get("info").map(|i| Info { title: s(i, "title"), version: s(i, "version") }),
        paths: doc.get("paths").and_then(Value::as_object).map(|m| Paths {
            path: m
                .iter()
                .map(|(p, item)| NamedPathItem {
                    name: p.clone(),
                    value: Some(PathItem {
                        get: op(item, "get"),
                        put: op(item, "put"),
                        post: op(item, "post"),
                        delete: op(item, "delete"),
                        patch: op(item, "patch"),
                    }),
                })
                .collect(),
        }),
        definitions: doc.get("definitions").and_then(Value::as_object).map(|m| Definitions {
            additional_properties: m
                .iter()
                .map(|(k, x)| NamedSchema { name: k.clone(), value: Some(schema(x)) })
                .collect(),
        }),
    }
}

/// Encoded protobuf bytes of the document.
pub fn encode(doc: &Value) -> Vec<u8> {
    document(doc).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn round_trips_the_parts_kubectl_reads() {
        let doc = json!({
            "swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": {"/api/v1/namespaces/{namespace}/configmaps/{name}": {"patch": {
                "operationId": "patchCoreV1NamespacedConfigMap",
                "parameters": [{"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true}],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": "ConfigMap"}}}},
            "definitions": {"com.example.v1.Widget": {"type": "object", "required": ["spec"],
                "properties": {"spec": {"type": "object", "additionalProperties": {"type": "string"}},
                               "items": {"type": "array", "items": {"type": "integer", "enum": [1, 2]}}},
                "x-kubernetes-group-version-kind": [{"group": "example.com", "version": "v1", "kind": "Widget"}]}}
        });
        let bytes = encode(&doc);
        let back = Document::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.swagger, "2.0");
        let p = &back.paths.as_ref().unwrap().path[0];
        assert_eq!(p.name, "/api/v1/namespaces/{namespace}/configmaps/{name}");
        let patch = p.value.as_ref().unwrap().patch.as_ref().unwrap();
        let q = patch.parameters[0].parameter.as_ref().unwrap().non_body_parameter.as_ref().unwrap();
        assert_eq!(q.query_parameter_sub_schema.as_ref().unwrap().name, "fieldValidation");
        assert_eq!(patch.vendor_extension[0].name, "x-kubernetes-group-version-kind");
        let gvk: Value =
            serde_json::from_str(&patch.vendor_extension[0].value.as_ref().unwrap().yaml).unwrap();
        assert_eq!(gvk["kind"], "ConfigMap");
        let d = &back.definitions.as_ref().unwrap().additional_properties[0];
        let sch = d.value.as_ref().unwrap();
        assert_eq!(sch.r#type.as_ref().unwrap().value, ["object"]);
        assert_eq!(sch.required, ["spec"]);
        let props = &sch.properties.as_ref().unwrap().additional_properties;
        let spec = props.iter().find(|p| p.name == "spec").unwrap().value.as_ref().unwrap();
        assert!(spec.additional_properties.as_ref().unwrap().schema.is_some());
        let items = props.iter().find(|p| p.name == "items").unwrap().value.as_ref().unwrap();
        assert_eq!(items.items.as_ref().unwrap().schema[0].r#enum.len(), 2);
    }
}

//! Errors in Parse's shape: `{"code": .., "error": ".."}` with Parse's codes
//! and the HTTP statuses Parse Server gives them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Parse's error codes that this API gives (the numbers of `Parse.Error`).
pub mod code {
    /// Something failed inside the node (the store); nothing the client did.
    pub const INTERNAL_SERVER_ERROR: i64 = 1;
    /// The object (or user, or endpoint) does not exist, or is not visible.
    pub const OBJECT_NOT_FOUND: i64 = 101;
    /// A query the node cannot run (unknown operator, bad limit ...).
    pub const INVALID_QUERY: i64 = 102;
    /// A class this node does not serve.
    pub const INVALID_CLASS_NAME: i64 = 103;
    /// A field the class does not have.
    pub const INVALID_KEY_NAME: i64 = 105;
    /// A pointer that is not `{"__type":"Pointer","className":..,"objectId":..}`.
    pub const INVALID_POINTER: i64 = 106;
    /// The body is not JSON (or not the JSON expected).
    pub const INVALID_JSON: i64 = 107;
    /// An ACL that is not `{"*"|userId: {"read": bool, "write": bool}}`.
    pub const INVALID_ACL: i64 = 123;
    /// A field has the wrong type.
    pub const INCORRECT_TYPE: i64 = 111;
    /// The request is larger than the node accepts.
    pub const OBJECT_TOO_LARGE: i64 = 116;
    /// The rules forbid it (signatures in place of ACLs): nothing changed.
    pub const OPERATION_FORBIDDEN: i64 = 119;
    /// A value the rules refuse (too long a title, a bad permission ...).
    pub const VALIDATION_ERROR: i64 = 142;
    /// Too many requests for this session (or for sign-up and login).
    pub const REQUEST_LIMIT_EXCEEDED: i64 = 155;
    /// Sign-up without a username.
    pub const USERNAME_MISSING: i64 = 200;
    /// Sign-up without a password.
    pub const PASSWORD_MISSING: i64 = 201;
    /// The username is taken by another account of this node.
    pub const USERNAME_TAKEN: i64 = 202;
    /// A session token is needed and none was sent.
    pub const SESSION_MISSING: i64 = 206;
    /// The session token is unknown, expired or logged out.
    pub const INVALID_SESSION_TOKEN: i64 = 209;
}

/// An error answered in Parse's form. `message` says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (Parse error {code})")]
pub struct ParseError {
    /// Parse's code (see [`code`]).
    pub code: i64,
    /// What went wrong and what to do, in words.
    pub message: String,
}

impl ParseError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        ParseError {
            code,
            message: message.into(),
        }
    }

    /// 101: not found (or not visible to this user).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(code::OBJECT_NOT_FOUND, message)
    }

    /// 119: forbidden by the rules.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(code::OPERATION_FORBIDDEN, message)
    }

    /// 102: a query the node cannot run.
    pub fn invalid_query(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_QUERY, message)
    }

    /// 107: not the JSON expected.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_JSON, message)
    }

    /// 111: a field of the wrong type.
    pub fn incorrect_type(message: impl Into<String>) -> Self {
        Self::new(code::INCORRECT_TYPE, message)
    }

    /// 1: the node failed; logged, and said without internals.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "local API: internal failure");
        Self::new(
            code::INTERNAL_SERVER_ERROR,
            format!("the node failed: {what}; see its log"),
        )
    }

    /// The HTTP status Parse Server gives this code.
    pub fn status(&self) -> StatusCode {
        match self.code {
            code::INTERNAL_SERVER_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
            code::OBJECT_NOT_FOUND => StatusCode::NOT_FOUND,
            code::REQUEST_LIMIT_EXCEEDED => StatusCode::TOO_MANY_REQUESTS,
            code::OBJECT_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"code": self.code, "error": self.message})
    }
}

impl IntoResponse for ParseError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.to_json())).into_response()
    }
}

impl From<tincan_store::StorageError> for ParseError {
    fn from(e: tincan_store::StorageError) -> Self {
        ParseError::internal(e)
    }
}

/// What this crate's operations return.
pub type ApiResult<T> = Result<T, ParseError>;

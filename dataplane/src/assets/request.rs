//! The signed request messages of the asset routes, parsed from verified messages.
//!
//! | action | fields |
//! |---|---|
//! | `Register` | `kind` (text), `identity` (text), `unit` (text), `capacity` (integer ≥ 1, optional) |
//! | `Allocate` | `asset` (asset id), `amount` (integer ≥ 1) |
//! | `Release` | `allocation` (allocation id) |
//!
//! Integers may be JSON integers or decimal text. Any other field is allowed (an `anchor` makes
//! two identical requests two messages) and ignored.

use crate::message::{Address, Id, Message, VerifiedMessage};

use super::{AllocationId, AssetError, IDENTITY_BYTES_MAX, KIND_BYTES_MAX, UNIT_BYTES_MAX};

/// `Register`: a new asset of the operator's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// Kind (`[a-z][a-z0-9-]*`, at most [`KIND_BYTES_MAX`] bytes).
    pub kind: String,
    /// Identity (1..=[`IDENTITY_BYTES_MAX`] bytes, no control characters).
    pub identity: String,
    /// Capacity in `unit`, or unknown.
    pub capacity: Option<u64>,
    /// Unit (`[a-z][a-z0-9-]*`, at most [`UNIT_BYTES_MAX`] bytes).
    pub unit: String,
}

/// `Allocate`: `amount` of `asset` for the signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateRequest {
    /// The asset id as the message names it (checked against the path by the registry).
    pub asset: String,
    /// At least 1.
    pub amount: u64,
}

/// `Release`: give back one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// The allocation.
    pub allocation: AllocationId,
}

/// What a signed asset message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Register an asset.
    Register(RegisterRequest),
    /// Allocate.
    Allocate(AllocateRequest),
    /// Release.
    Release(ReleaseRequest),
}

/// A parsed request with who signed it and its message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The first committer's address.
    pub signer: Address,
    /// The message id (the allocation id of an `Allocate`).
    pub id: Id,
    /// The request.
    pub request: Request,
}

impl Signed {
    /// Parses a verified message.
    ///
    /// # Errors
    /// [`AssetError::RequestInvalid`] naming the field at fault.
    pub fn parse(message: &VerifiedMessage) -> Result<Self, AssetError> {
        Ok(Self {
            signer: message.from(),
            id: message.id(),
            request: Request::parse(message.message())?,
        })
    }
}

fn invalid(text: impl Into<String>) -> AssetError {
    AssetError::RequestInvalid(text.into())
}

fn text<'m>(message: &'m Message, key: &str) -> Result<&'m str, AssetError> {
    message
        .text(key)
        .ok_or_else(|| invalid(format!("`{key}` must be present, as text")))
}

fn positive(message: &Message, key: &str) -> Result<Option<u64>, AssetError> {
    let Some(value) = message.get(key) else {
        return Ok(None);
    };
    match value.as_int() {
        Some(n) if n >= 1 => Ok(Some(n.unsigned_abs())),
        _ => Err(invalid(format!("`{key}` must be an integer ≥ 1"))),
    }
}

/// `[a-z][a-z0-9-]*`, 1..=`max` bytes.
fn name(message: &Message, key: &str, max: usize) -> Result<String, AssetError> {
    let value = text(message, key)?;
    let mut bytes = value.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !(first_ok && rest_ok && value.len() <= max) {
        return Err(invalid(format!(
            "`{key}` must match [a-z][a-z0-9-]* and be at most {max} bytes"
        )));
    }
    Ok(value.to_owned())
}

impl Request {
    /// Parses the fields of a (verified) request message.
    ///
    /// # Errors
    /// [`AssetError::RequestInvalid`].
    pub fn parse(message: &Message) -> Result<Self, AssetError> {
        match text(message, "action")? {
            "Register" => {
                let identity = text(message, "identity")?;
                if identity.is_empty()
                    || identity.len() > IDENTITY_BYTES_MAX
                    || identity.chars().any(char::is_control)
                {
                    return Err(invalid(format!(
                        "`identity` must be 1..={IDENTITY_BYTES_MAX} bytes without control characters"
                    )));
                }
                Ok(Request::Register(RegisterRequest {
                    kind: name(message, "kind", KIND_BYTES_MAX)?,
                    identity: identity.to_owned(),
                    capacity: positive(message, "capacity")?,
                    unit: name(message, "unit", UNIT_BYTES_MAX)?,
                }))
            }
            "Allocate" => {
                let amount = positive(message, "amount")?
                    .ok_or_else(|| invalid("`amount` must be present"))?;
                Ok(Request::Allocate(AllocateRequest {
                    asset: text(message, "asset")?.to_owned(),
                    amount,
                }))
            }
            "Release" => {
                let allocation = text(message, "allocation")?
                    .parse()
                    .map_err(|_| invalid("`allocation` must be an allocation id"))?;
                Ok(Request::Release(ReleaseRequest { allocation }))
            }
            other => Err(invalid(format!(
                "`action` must be Register, Allocate or Release, not {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// The action's name, as in the message.
    pub fn action(&self) -> &'static str {
        match self {
            Request::Register(_) => "Register",
            Request::Allocate(_) => "Allocate",
            Request::Release(_) => "Release",
        }
    }
}

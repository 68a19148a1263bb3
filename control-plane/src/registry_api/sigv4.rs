//! AWS Signature Version 4, checked: how the AWS CLI and SDKs sign their requests to Cloud
//! Map. The registry API's token is the secret access key (any access key id), so users'
//! own tools call it with `AWS_SECRET_ACCESS_KEY` set to the token.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::http::request::Parts;
use ring::{digest, hmac};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// A signed request older or newer than this is refused (AWS allows 15 minutes of skew).
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request's signature is not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Authorization is not {ALGORITHM} with Credential, SignedHeaders and Signature")]
    Malformed,
    #[error("X-Amz-Date is missing or not YYYYMMDDTHHMMSSZ")]
    Date,
    #[error("the request was signed more than 15 minutes from now")]
    Skew,
    #[error("signed header {0} is not in the request")]
    MissingHeader(String),
    #[error(
        "the signature does not match (sign with the registry API token as the secret access key)"
    )]
    Mismatch,
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
struct Authorization<'a> {
    /// `date/region/service/aws4_request`.
    scope: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn authorization(value: &str) -> Result<Authorization<'_>, SignatureError> {
    let fields = value
        .strip_prefix(ALGORITHM)
        .ok_or(SignatureError::Malformed)?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for field in fields.split(',') {
        match field.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let credential = credential.ok_or(SignatureError::Malformed)?;
    let (_access_key, scope) = credential
        .split_once('/')
        .ok_or(SignatureError::Malformed)?;
    Ok(Authorization {
        scope,
        signed_headers: signed_headers.ok_or(SignatureError::Malformed)?,
        signature: signature.ok_or(SignatureError::Malformed)?,
    })
}

/// Checks a request signed with `secret` (`authorization` its Authorization header).
pub fn verify(
    parts: &Parts,
    body: &[u8],
    authorization_header: &str,
    secret: &str,
    now: SystemTime,
) -> Result<(), SignatureError> {
    let auth = authorization(authorization_header)?;
    let header = |name: &str| -> Result<String, SignatureError> {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(SignatureError::MissingHeader(name.to_owned()));
        }
        Ok(values.join(","))
    };
    let amz_date = header("x-amz-date").map_err(|_| SignatureError::Date)?;
    let signed_at = parse_amz_date(&amz_date).ok_or(SignatureError::Date)?;
    let skew = now
        .duration_since(signed_at)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or(Duration::MAX);
    if skew > MAX_SKEW {
        return Err(SignatureError::Skew);
    }
    let mut canonical_headers = String::new();
    for name in auth.signed_headers.split(';') {
        canonical_headers.push_str(&format!("{name}:{}\n", header(name)?));
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{}\n{}",
        parts.method,
        parts.uri.path(),
        canonical_query(parts.uri.query().unwrap_or("")),
        auth.signed_headers,
        hex(digest::digest(&digest::SHA256, body).as_ref()),
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        auth.scope,
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in auth.scope.split('/') {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes())
            .as_ref()
            .to_vec();
    }
    let Some(signature) = unhex(auth.signature) else {
        return Err(SignatureError::Mismatch);
    };
    // ring compares in constant time.
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        string_to_sign.as_bytes(),
        &signature,
    )
    .map_err(|_| SignatureError::Mismatch)
}

/// The query's parameters sorted, as SigV4 signs them (the CLI sends none to this API).
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// `20261130T155715Z` as a time.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let digits = |range: std::ops::Range<usize>| text.get(range)?.parse::<u64>().ok();
    if text.len() != 16 || text.as_bytes()[8] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar (Howard Hinnant's
/// algorithm), for years from 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// AWS's published SigV4 example (the "get-vanilla" case of the signature test suite):
    /// GET / on example.amazonaws.com, signed 20150830T123600Z.
    #[test]
    fn checks_aws_published_example() {
        let request = hyper::Request::get("/")
            .header("host", "example.amazonaws.com")
            .header("x-amz-date", "20150830T123600Z")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let authorization = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let at = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(verify(&parts, b"", authorization, secret, at), Ok(()));
        assert_eq!(
            verify(&parts, b"", authorization, "another secret", at),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&parts, b"x", authorization, secret, at),
            Err(SignatureError::Mismatch),
            "the body is signed"
        );
        let later = at + Duration::from_secs(16 * 60);
        assert_eq!(
            verify(&parts, b"", authorization, secret, later),
            Err(SignatureError::Skew)
        );
        assert_eq!(
            verify(&parts, b"", "Bearer x", secret, at),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_amz_date("19700102T000001Z"),
            Some(UNIX_EPOCH + Duration::from_secs(86_401))
        );
        assert_eq!(
            parse_amz_date("20240229T120000Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_208_000))
        );
        assert_eq!(parse_amz_date("2024-02-29T12:00:00Z"), None);
        assert_eq!(parse_amz_date("20241329T120000Z"), None);
    }
}

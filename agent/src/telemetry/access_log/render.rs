//! Rendering an [`Entry`] in a parsed format: Envoy's meaning for each operator, `-` for a
//! value the request does not have (JSON: `null`), numbers as numbers in JSON when a value
//! is nothing but the operator.
use std::{
    borrow::Cow,
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::HeaderMap;
use mesh_model::access_log::{Command, HeaderRef, LogFormat, Operator, Segment, Template};

use super::Entry;

enum Field<'a> {
    Text(Cow<'a, str>),
    Number(u64),
    Missing,
}

/// One line, ending in a newline.
pub fn render(format: &LogFormat, entry: &Entry) -> String {
    let mut line = String::with_capacity(256);
    match format {
        LogFormat::Text(template) => {
            text(template, entry, &mut line);
            if !line.ends_with('\n') {
                line.push('\n');
            }
        }
        LogFormat::Json(pairs) => {
            line.push('{');
            for (index, (key, template)) in pairs.iter().enumerate() {
                if index > 0 {
                    line.push(',');
                }
                json_string(key, &mut line);
                line.push(':');
                match template.sole_command().map(|c| field(c, entry)) {
                    Some(Field::Number(n)) => {
                        let _ = write!(line, "{n}");
                    }
                    Some(Field::Missing) => line.push_str("null"),
                    _ => {
                        let mut value = String::new();
                        text(template, entry, &mut value);
                        json_string(&value, &mut line);
                    }
                }
            }
            line.push_str("}\n");
        }
    }
    line
}

fn text(template: &Template, entry: &Entry, out: &mut String) {
    for segment in &template.0 {
        match segment {
            Segment::Literal(literal) => out.push_str(literal),
            Segment::Command(command) => match field(command, entry) {
                Field::Text(value) => out.push_str(&value),
                Field::Number(n) => {
                    let _ = write!(out, "{n}");
                }
                Field::Missing => out.push('-'),
            },
        }
    }
}

fn field<'a>(command: &Command, entry: &'a Entry) -> Field<'a> {
    let value = operator(&command.operator, entry);
    match (value, command.max_length) {
        (Field::Text(text), Some(max)) if text.chars().count() > max => {
            Field::Text(text.chars().take(max).collect::<String>().into())
        }
        (value, _) => value,
    }
}

fn operator<'a>(operator: &Operator, entry: &'a Entry) -> Field<'a> {
    let text = |s: &'a str| Field::Text(Cow::Borrowed(s));
    let owned = |s: String| Field::Text(Cow::Owned(s));
    let optional = |value: Option<String>| value.map_or(Field::Missing, owned);
    let millis =
        |d: Option<Duration>| d.map_or(Field::Missing, |d| Field::Number(d.as_millis() as u64));
    match operator {
        Operator::StartTime(format) => owned(start_time(entry.start, format.as_deref())),
        Operator::RequestHeader(header) => request_header(entry, header),
        Operator::ResponseHeader(header) => entry
            .response_headers
            .as_ref()
            .map_or(Field::Missing, |h| lookup(h, header)),
        Operator::ResponseTrailer(header) => entry
            .trailers
            .as_ref()
            .map_or(Field::Missing, |h| lookup(h, header)),
        Operator::Protocol => entry.protocol.map_or(Field::Missing, text),
        Operator::ResponseCode => Field::Number(entry.response_code.map_or(0, u64::from)),
        Operator::ResponseCodeDetails => text(entry.flags.details()),
        Operator::ResponseFlags => owned(entry.flags.to_text()),
        Operator::BytesReceived => Field::Number(entry.bytes_received),
        Operator::BytesSent => Field::Number(entry.bytes_sent),
        Operator::Duration => millis(Some(entry.duration)),
        Operator::RequestDuration => Field::Missing,
        Operator::ResponseDuration => millis(entry.response_duration),
        Operator::UpstreamHost => optional(entry.upstream_host.map(|a| a.to_string())),
        Operator::UpstreamCluster => entry
            .upstream_cluster
            .as_deref()
            .map_or(Field::Missing, text),
        Operator::UpstreamTransportFailureReason => {
            entry.failure_reason.as_deref().map_or(Field::Missing, text)
        }
        Operator::UpstreamRequestAttemptCount => Field::Number(u64::from(entry.attempts)),
        Operator::DownstreamRemoteAddress => owned(entry.downstream_remote.to_string()),
        Operator::DownstreamRemoteAddressWithoutPort => {
            owned(entry.downstream_remote.ip().to_string())
        }
        Operator::DownstreamLocalAddress => owned(entry.downstream_local.to_string()),
        Operator::DownstreamLocalAddressWithoutPort => {
            owned(entry.downstream_local.ip().to_string())
        }
        Operator::DownstreamLocalPort => Field::Number(u64::from(entry.downstream_local.port())),
        Operator::RouteName => entry.route.as_deref().map_or(Field::Missing, text),
        Operator::GrpcStatus => entry.grpc_status.map_or(Field::Missing, |code| {
            text(
                GRPC_CODE_NAMES
                    .get(code as usize)
                    .copied()
                    .unwrap_or("Unknown"),
            )
        }),
        Operator::GrpcStatusNumber => entry
            .grpc_status
            .map_or(Field::Missing, |c| Field::Number(u64::from(c))),
        Operator::Hostname => text(crate::host::hostname().unwrap_or("-")),
        Operator::VirtualNode => text(&entry.virtual_node),
        Operator::SourceVirtualNode => match &entry.source_virtual_node {
            Some(source) => text(source),
            None => Field::Missing,
        },
    }
}

/// gRPC's status code names, by number (what Envoy's `%GRPC_STATUS%` prints).
const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

fn request_header<'a>(entry: &'a Entry, header: &HeaderRef) -> Field<'a> {
    let Some(request) = &entry.request else {
        return Field::Missing;
    };
    let one = |name: &str| -> Option<Cow<'a, str>> {
        match name {
            ":method" => Some(Cow::Borrowed(request.method.as_str())),
            ":path" => request
                .uri
                .path_and_query()
                .map(|p| Cow::Borrowed(p.as_str())),
            ":authority" => Some(Cow::Borrowed(request.authority.as_str())),
            ":scheme" => Some(Cow::Borrowed(request.uri.scheme_str().unwrap_or("http"))),
            _ => header_value(&request.headers, name),
        }
    };
    one(&header.name)
        .or_else(|| header.alternative.as_deref().and_then(one))
        .map_or(Field::Missing, Field::Text)
}

fn lookup<'a>(headers: &'a HeaderMap, header: &HeaderRef) -> Field<'a> {
    header_value(headers, &header.name)
        .or_else(|| {
            header
                .alternative
                .as_deref()
                .and_then(|name| header_value(headers, name))
        })
        .map_or(Field::Missing, Field::Text)
}

fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
}

fn json_string(value: &str, out: &mut String) {
    match serde_json::to_string(value) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

/// `START_TIME`: ISO 8601 UTC with milliseconds by default, else the strftime subset Envoy
/// users write (`%Y %m %d %H %M %S %z %Z %s %F %T %%`, `%f` / `%3f` / `%6f` / `%9f`).
fn start_time(time: SystemTime, format: Option<&str>) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let civil = Civil::from_unix(since.as_secs());
    let nanos = since.subsec_nanos();
    let Some(format) = format else {
        return format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            civil.year,
            civil.month,
            civil.day,
            civil.hour,
            civil.minute,
            civil.second,
            nanos / 1_000_000
        );
    };
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let digits = chars
            .next_if(char::is_ascii_digit)
            .and_then(|d| d.to_digit(10));
        let _ = match (digits, chars.next()) {
            (None, Some('Y')) => write!(out, "{:04}", civil.year),
            (None, Some('m')) => write!(out, "{:02}", civil.month),
            (None, Some('d')) => write!(out, "{:02}", civil.day),
            (None, Some('H')) => write!(out, "{:02}", civil.hour),
            (None, Some('M')) => write!(out, "{:02}", civil.minute),
            (None, Some('S')) => write!(out, "{:02}", civil.second),
            (None, Some('F')) => {
                write!(out, "{:04}-{:02}-{:02}", civil.year, civil.month, civil.day)
            }
            (None, Some('T')) => write!(
                out,
                "{:02}:{:02}:{:02}",
                civil.hour, civil.minute, civil.second
            ),
            (None, Some('z')) => write!(out, "+0000"),
            (None, Some('Z')) => write!(out, "UTC"),
            (None, Some('s')) => write!(out, "{}", since.as_secs()),
            (None, Some('%')) => write!(out, "%"),
            (width, Some('f')) => {
                let width = width.unwrap_or(9).clamp(1, 9) as usize;
                let digits = format!("{nanos:09}");
                write!(out, "{}", &digits[..width])
            }
            (width, Some(other)) => {
                out.push('%');
                if let Some(width) = width {
                    let _ = write!(out, "{width}");
                }
                write!(out, "{other}")
            }
            (_, None) => write!(out, "%"),
        };
    }
    out
}

/// A UTC calendar time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
}

impl Civil {
    /// Howard Hinnant's days-to-civil algorithm.
    fn from_unix(seconds: u64) -> Self {
        let days = (seconds / 86_400) as i64;
        let of_day = seconds % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: of_day / 3_600,
            minute: of_day % 3_600 / 60,
            second: of_day % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Method};

    use super::*;
    use crate::telemetry::access_log::{RequestHead, ResponseFlags};

    fn entry() -> Entry {
        let mut entry = Entry::new(
            "10.0.0.5:40000".parse().unwrap(),
            "10.0.0.9:8080".parse().unwrap(),
            "client",
        );
        // 2024-02-29T13:14:15.678Z
        entry.start = UNIX_EPOCH + Duration::from_millis(1_709_212_455_678);
        entry.protocol = Some("HTTP/1.1");
        let mut headers = HeaderMap::new();
        headers.insert(
            "user-agent",
            HeaderValue::from_static("curl/8.0 \"quoted\""),
        );
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        entry.request = Some(RequestHead {
            method: Method::POST,
            uri: "/items?page=2".parse().unwrap(),
            authority: "shop.local:8080".into(),
            headers,
        });
        entry.response_code = Some(503);
        entry.flags.insert(ResponseFlags::UPSTREAM_CONNECT_FAILURE);
        entry.flags.insert(ResponseFlags::RETRY_LIMIT_EXCEEDED);
        entry.bytes_received = 12;
        entry.bytes_sent = 34;
        entry.duration = Duration::from_millis(56);
        entry.upstream_cluster = Some("shop/products-v1/8080".into());
        entry.attempts = 3;
        entry
    }

    #[test]
    fn envoys_default_line() {
        let format = LogFormat::text(mesh_model::access_log::DEFAULT_TEXT_FORMAT).unwrap();
        assert_eq!(
            render(&format, &entry()),
            r#"[2024-02-29T13:14:15.678Z] "POST /items?page=2 HTTP/1.1" 503 UF,URX 12 34 56 - "-" "curl/8.0 "quoted"" "abc" "shop.local:8080" "-"
"#
        );
    }

    #[test]
    fn json_keeps_numbers_nulls_and_escapes() {
        let format = LogFormat::json([
            ("code", "%RESPONSE_CODE%"),
            ("agent", "%REQ(USER-AGENT)%"),
            ("host", "%UPSTREAM_HOST%"),
            ("line", "%REQ(:METHOD)% %REQ(:PATH):6%"),
            ("tries", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
        ])
        .unwrap();
        let line = render(&format, &entry());
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["code"], 503);
        assert_eq!(value["agent"], "curl/8.0 \"quoted\"");
        assert_eq!(value["host"], serde_json::Value::Null);
        assert_eq!(value["line"], "POST /items");
        assert_eq!(value["tries"], 3);
        assert!(
            line.starts_with("{\"code\""),
            "keys in the order given: {line}"
        );
    }

    #[test]
    fn start_time_formats() {
        let start = entry().start;
        assert_eq!(
            start_time(start, Some("%Y-%m-%dT%H:%M:%S.%3f%z")),
            "2024-02-29T13:14:15.678+0000"
        );
        assert_eq!(start_time(start, Some("%s")), "1709212455");
        assert_eq!(
            start_time(start, Some("%F %T %% %6f")),
            "2024-02-29 13:14:15 % 678000"
        );
        assert_eq!(
            start_time(UNIX_EPOCH + Duration::from_secs(951_782_400), None),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn headers_fall_back_to_the_alternative_and_flags_read_like_envoys() {
        let format = LogFormat::text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %VIRTUAL_NODE%").unwrap();
        assert_eq!(
            render(&format, &entry()),
            "/items?page=2 UF,URX upstream_reset_before_response_started{connection_failure} client\n"
        );
        let mut ok = entry();
        ok.flags = ResponseFlags::default();
        assert_eq!(
            render(
                &LogFormat::text("%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%").unwrap(),
                &ok
            ),
            "- via_upstream\n"
        );
    }
}

//! Access log formats as App Mesh users write them (`logging.accessLog.file.format`): Envoy's
//! format strings — literal text with `%COMMAND%`, `%COMMAND(arg)%` and `%COMMAND(arg):N%`
//! operators — either as one `text` line or as `json` key/value pairs. Parsed once here, so
//! validation rejects an unknown operator with its position and the proxy renders a parsed
//! form per request.
use std::fmt;

/// Envoy's default format, used when an access log names no format.
pub const DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// A parsed access log format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per request; a newline is added when the format does not end with one.
    Text(Template),
    /// One JSON object per line, keys in the order given.
    Json(Vec<(String, Template)>),
}

/// Literal text and operators, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template(pub Vec<Segment>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Command(Command),
}

/// One `%OPERATOR%`, with the length its value is cut to (`:N`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub operator: Operator,
    pub max_length: Option<usize>,
}

/// A header lookup: `NAME` or `NAME?ALTERNATIVE` (the alternative when the first is absent),
/// lower-cased; pseudo-headers (`:path`, `:method`, `:authority`, `:scheme`) included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRef {
    pub name: String,
    pub alternative: Option<String>,
}

/// The command operators the proxy fills in (Envoy's names and meanings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `START_TIME` or `START_TIME(strftime format)`; the default is ISO 8601 with ms, UTC.
    StartTime(Option<String>),
    RequestHeader(HeaderRef),
    ResponseHeader(HeaderRef),
    ResponseTrailer(HeaderRef),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    /// Start to the last byte of the response, in ms.
    Duration,
    /// Start to the last byte of the request, in ms.
    RequestDuration,
    /// Start to the first byte of the response, in ms.
    ResponseDuration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamTransportFailureReason,
    UpstreamRequestAttemptCount,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    RouteName,
    GrpcStatus,
    GrpcStatusNumber,
    Hostname,
    /// The virtual node whose listener took the request (mesh-agent's own).
    VirtualNode,
    /// The caller's virtual node as its TLS certificate names it (mesh-agent's own).
    SourceVirtualNode,
}

/// Operators that take no argument, by name.
const PLAIN_OPERATORS: [(&str, Operator); 25] = [
    ("PROTOCOL", Operator::Protocol),
    ("RESPONSE_CODE", Operator::ResponseCode),
    ("RESPONSE_CODE_DETAILS", Operator::ResponseCodeDetails),
    ("RESPONSE_FLAGS", Operator::ResponseFlags),
    ("BYTES_RECEIVED", Operator::BytesReceived),
    ("BYTES_SENT", Operator::BytesSent),
    ("DURATION", Operator::Duration),
    ("REQUEST_DURATION", Operator::RequestDuration),
    ("RESPONSE_DURATION", Operator::ResponseDuration),
    ("UPSTREAM_HOST", Operator::UpstreamHost),
    ("UPSTREAM_CLUSTER", Operator::UpstreamCluster),
    (
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        Operator::UpstreamTransportFailureReason,
    ),
    (
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        Operator::UpstreamRequestAttemptCount,
    ),
    (
        "DOWNSTREAM_REMOTE_ADDRESS",
        Operator::DownstreamRemoteAddress,
    ),
    (
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Operator::DownstreamRemoteAddressWithoutPort,
    ),
    ("DOWNSTREAM_LOCAL_ADDRESS", Operator::DownstreamLocalAddress),
    (
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        Operator::DownstreamLocalAddressWithoutPort,
    ),
    ("DOWNSTREAM_LOCAL_PORT", Operator::DownstreamLocalPort),
    ("ROUTE_NAME", Operator::RouteName),
    ("GRPC_STATUS", Operator::GrpcStatus),
    ("GRPC_STATUS_NUMBER", Operator::GrpcStatusNumber),
    ("HOSTNAME", Operator::Hostname),
    ("VIRTUAL_NODE", Operator::VirtualNode),
    ("SOURCE_VIRTUAL_NODE", Operator::SourceVirtualNode),
    ("START_TIME", Operator::StartTime(None)),
];

/// Why a format string was rejected, with the byte offset of the offending operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: {problem}")]
pub struct FormatError {
    pub offset: usize,
    pub problem: OperatorError,
}

/// What is wrong with one `%OPERATOR%`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("a % must start a command operator such as %START_TIME%")]
    NoName,
    #[error("%{name}(: the argument has no closing parenthesis")]
    UnclosedArgument { name: String },
    #[error("%{name}: a length (digits) must follow the :")]
    BadLength { name: String },
    #[error("%{name}: the operator has no closing %")]
    Unclosed { name: String },
    #[error("%{name}(...)% needs a header name")]
    NoHeaderName { name: String },
    #[error("%{name}% takes no argument")]
    TakesNoArgument { name: String },
    #[error(
        "unknown command operator %{name}% (supported: REQ(header), RESP(header), TRAILER(header), START_TIME(format), {})",
        plain_operator_names()
    )]
    Unknown { name: String },
}

impl LogFormat {
    pub fn text(format: &str) -> Result<Self, FormatError> {
        Template::parse(format).map(Self::Text)
    }

    /// JSON key/value pairs; an error names the key whose value is wrong.
    pub fn json<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, (String, FormatError)> {
        pairs
            .into_iter()
            .map(|(key, value)| {
                Template::parse(value)
                    .map(|template| (key.to_owned(), template))
                    .map_err(|error| (key.to_owned(), error))
            })
            .collect::<Result<_, _>>()
            .map(Self::Json)
    }

    /// Every operator the format uses.
    pub fn operators(&self) -> impl Iterator<Item = &Operator> {
        let templates: Vec<&Template> = match self {
            Self::Text(template) => vec![template],
            Self::Json(pairs) => pairs.iter().map(|(_, t)| t).collect(),
        };
        templates.into_iter().flat_map(|t| {
            t.0.iter().filter_map(|segment| match segment {
                Segment::Command(command) => Some(&command.operator),
                Segment::Literal(_) => None,
            })
        })
    }
}

impl Template {
    pub fn parse(format: &str) -> Result<Self, FormatError> {
        let mut segments = Vec::new();
        let mut rest = format;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_owned()));
            }
            let offset = format.len() - rest.len() + start;
            let after = &rest[start + 1..];
            let (command, used) =
                parse_command(after).map_err(|problem| FormatError { offset, problem })?;
            segments.push(Segment::Command(command));
            rest = &after[used..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Ok(Self(segments))
    }

    /// The single operator this template is, if it is nothing else (JSON values keep their
    /// type then: numbers stay numbers).
    pub fn sole_command(&self) -> Option<&Command> {
        match self.0.as_slice() {
            [Segment::Command(command)] => Some(command),
            _ => None,
        }
    }
}

/// Parses `NAME[(arg)][:N]%` (after the opening `%`); returns the command and the bytes used.
fn parse_command(text: &str) -> Result<(Command, usize), OperatorError> {
    let name_end = text
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if name.is_empty() {
        return Err(OperatorError::NoName);
    }
    let mut used = name_end;
    let mut argument = None;
    if text[used..].starts_with('(') {
        let close = text[used..]
            .find(')')
            .ok_or_else(|| OperatorError::UnclosedArgument { name: name.into() })?;
        argument = Some(&text[used + 1..used + close]);
        used += close + 1;
    }
    let mut max_length = None;
    if let Some(after) = text[used..].strip_prefix(':') {
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let length = after[..digits]
            .parse()
            .map_err(|_| OperatorError::BadLength { name: name.into() })?;
        max_length = Some(length);
        used += 1 + digits;
    }
    if !text[used..].starts_with('%') {
        return Err(OperatorError::Unclosed { name: name.into() });
    }
    used += 1;
    let operator = operator(name, argument)?;
    Ok((
        Command {
            operator,
            max_length,
        },
        used,
    ))
}

fn operator(name: &str, argument: Option<&str>) -> Result<Operator, OperatorError> {
    let header = |argument: Option<&str>| -> Result<HeaderRef, OperatorError> {
        let argument = argument
            .filter(|a| !a.is_empty())
            .ok_or_else(|| OperatorError::NoHeaderName { name: name.into() })?;
        let mut names = argument.splitn(2, '?');
        let name = names.next().unwrap_or_default().to_ascii_lowercase();
        let alternative = names.next().map(str::to_ascii_lowercase);
        Ok(HeaderRef { name, alternative })
    };
    match (name, argument) {
        ("REQ", _) => header(argument).map(Operator::RequestHeader),
        ("RESP", _) => header(argument).map(Operator::ResponseHeader),
        ("TRAILER", _) => header(argument).map(Operator::ResponseTrailer),
        ("START_TIME", Some(format)) => Ok(Operator::StartTime(Some(format.to_owned()))),
        (_, Some(_)) if PLAIN_OPERATORS.iter().any(|(n, _)| *n == name) => {
            Err(OperatorError::TakesNoArgument { name: name.into() })
        }
        (_, None) => PLAIN_OPERATORS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, operator)| operator.clone())
            .ok_or_else(|| OperatorError::Unknown { name: name.into() }),
        _ => Err(OperatorError::Unknown { name: name.into() }),
    }
}

/// The operators that take no argument, as a list for messages.
fn plain_operator_names() -> String {
    let known: Vec<&str> = PLAIN_OPERATORS.iter().map(|(n, _)| *n).collect();
    known.join(", ")
}

impl fmt::Display for HeaderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.alternative {
            Some(alternative) => write!(f, "{}?{alternative}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(operator: Operator, max_length: Option<usize>) -> Segment {
        Segment::Command(Command {
            operator,
            max_length,
        })
    }

    #[test]
    fn envoys_default_format_parses() {
        let format = LogFormat::text(DEFAULT_TEXT_FORMAT).unwrap();
        let operators: Vec<_> = format.operators().collect();
        assert_eq!(operators.len(), 15);
        assert_eq!(
            operators[2],
            &Operator::RequestHeader(HeaderRef {
                name: "x-envoy-original-path".into(),
                alternative: Some(":path".into())
            })
        );
    }

    #[test]
    fn literals_operators_arguments_and_lengths() {
        let template =
            Template::parse("a %REQ(User-Agent):10% b %START_TIME(%s)%:%DURATION%").unwrap();
        assert_eq!(
            template.0,
            [
                Segment::Literal("a ".into()),
                command(
                    Operator::RequestHeader(HeaderRef {
                        name: "user-agent".into(),
                        alternative: None
                    }),
                    Some(10)
                ),
                Segment::Literal(" b ".into()),
                command(Operator::StartTime(Some("%s".into())), None),
                Segment::Literal(":".into()),
                command(Operator::Duration, None),
            ]
        );
    }

    #[test]
    fn mistakes_are_reported_with_their_offset() {
        let error = Template::parse("ok %NOPE% x").unwrap_err();
        assert_eq!(error.offset, 3);
        assert!(
            error
                .problem
                .to_string()
                .contains("unknown command operator %NOPE%")
        );
        assert!(Template::parse("100% done").is_err());
        assert!(
            Template::parse("%REQ()%")
                .unwrap_err()
                .problem
                .to_string()
                .contains("header name")
        );
        assert!(Template::parse("%REQ(x%").is_err());
        assert!(
            Template::parse("%DURATION")
                .unwrap_err()
                .problem
                .to_string()
                .contains("closing %")
        );
        assert!(
            Template::parse("%DURATION(x)%")
                .unwrap_err()
                .problem
                .to_string()
                .contains("no argument")
        );
    }

    #[test]
    fn json_errors_name_the_key() {
        let (key, _) = LogFormat::json([("code", "%RESPONSE_CODE%"), ("bad", "%X%")]).unwrap_err();
        assert_eq!(key, "bad");
        let LogFormat::Json(pairs) =
            LogFormat::json([("code", "%RESPONSE_CODE%"), ("path", "p=%REQ(:PATH)%")]).unwrap()
        else {
            panic!("json")
        };
        assert!(pairs[0].1.sole_command().is_some());
        assert!(pairs[1].1.sole_command().is_none());
    }
}

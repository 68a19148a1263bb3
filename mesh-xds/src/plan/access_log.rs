//! Access loggers on HTTP connection managers and TCP proxies, as the proxy writes them: a
//! file path (`/dev/stdout` included) and a parsed format. Envoy's file and stdout loggers
//! are understood; anything else (other sinks, access log filters) is rejected rather than
//! silently not logged.
#![allow(deprecated)] // Envoy's older format fields are still what some control planes send.

use envoy_types::pb::{
    envoy::{
        config::{
            accesslog::v3::{AccessLog, access_log::ConfigType},
            core::v3::{SubstitutionFormatString, data_source, substitution_format_string},
        },
        extensions::access_loggers::{
            file::v3::{FileAccessLog, file_access_log},
            stream::v3::{StdoutAccessLog, stdout_access_log},
        },
    },
    google::protobuf::{Struct, value::Kind},
};
use mesh_model::access_log::{DEFAULT_TEXT_FORMAT, LogFormat};
use prost::{Message, Name};

use super::PlanError;

/// Where one access log goes and what each line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogPlan {
    pub path: String,
    pub format: LogFormat,
}

impl AccessLogPlan {
    pub fn from_protos(logs: &[AccessLog]) -> Result<Vec<Self>, PlanError> {
        logs.iter()
            .enumerate()
            .map(|(index, log)| {
                Self::from_proto(log).map_err(|e| e.within(format!("access_log[{index}]")))
            })
            .collect()
    }

    fn from_proto(log: &AccessLog) -> Result<Self, PlanError> {
        if log.filter.is_some() {
            return Err(PlanError::new(
                "filter",
                "access log filters are not supported",
            ));
        }
        let Some(ConfigType::TypedConfig(config)) = &log.config_type else {
            return Err(PlanError::new("typed_config", "missing"));
        };
        let decode_error = |e: prost::DecodeError| PlanError::new("typed_config", e.to_string());
        if config.type_url == FileAccessLog::type_url() {
            let file = FileAccessLog::decode(config.value.as_slice()).map_err(decode_error)?;
            if file.path.is_empty() {
                return Err(PlanError::new("typed_config.path", "empty"));
            }
            let format = match file.access_log_format {
                None => default_format(),
                Some(file_access_log::AccessLogFormat::Format(text)) => parse_text(&text),
                Some(
                    file_access_log::AccessLogFormat::JsonFormat(json)
                    | file_access_log::AccessLogFormat::TypedJsonFormat(json),
                ) => parse_json(&json),
                Some(file_access_log::AccessLogFormat::LogFormat(format)) => {
                    substitution_format(&format)
                }
            }
            .map_err(|e| e.within("typed_config"))?;
            Ok(Self {
                path: file.path,
                format,
            })
        } else if config.type_url == StdoutAccessLog::type_url() {
            let stdout = StdoutAccessLog::decode(config.value.as_slice()).map_err(decode_error)?;
            let format = match stdout.access_log_format {
                None => default_format(),
                Some(stdout_access_log::AccessLogFormat::LogFormat(format)) => {
                    substitution_format(&format)
                }
            }
            .map_err(|e| e.within("typed_config"))?;
            Ok(Self {
                path: "/dev/stdout".into(),
                format,
            })
        } else {
            Err(PlanError::new(
                "typed_config",
                format!(
                    "access logger {} is not supported (file and stdout are)",
                    config.type_url
                ),
            ))
        }
    }
}

fn default_format() -> Result<LogFormat, PlanError> {
    parse_text(DEFAULT_TEXT_FORMAT)
}

fn substitution_format(format: &SubstitutionFormatString) -> Result<LogFormat, PlanError> {
    use substitution_format_string::Format;
    match &format.format {
        None => default_format(),
        Some(Format::TextFormat(text)) => parse_text(text),
        Some(Format::TextFormatSource(source)) => match &source.specifier {
            Some(data_source::Specifier::InlineString(text)) => parse_text(text),
            Some(data_source::Specifier::InlineBytes(bytes)) => {
                parse_text(&String::from_utf8_lossy(bytes))
            }
            _ => Err(PlanError::new(
                "log_format.text_format_source",
                "only inline formats are supported",
            )),
        },
        Some(Format::JsonFormat(json)) => parse_json(json),
    }
    .map_err(|e| e.within("log_format"))
}

fn parse_text(text: &str) -> Result<LogFormat, PlanError> {
    LogFormat::text(text).map_err(|e| PlanError::new("format", e.to_string()))
}

/// A JSON format's keys come as a protobuf map, without an order: lines list them sorted.
fn parse_json(json: &Struct) -> Result<LogFormat, PlanError> {
    let mut pairs = Vec::with_capacity(json.fields.len());
    for (key, value) in &json.fields {
        match &value.kind {
            Some(Kind::StringValue(text)) => pairs.push((key.as_str(), text.as_str())),
            _ => {
                return Err(PlanError::new(
                    format!("json_format.{key}"),
                    "only string values (format strings) are supported",
                ));
            }
        }
    }
    pairs.sort_unstable();
    LogFormat::json(pairs)
        .map_err(|(key, e)| PlanError::new(format!("json_format.{key}"), e.to_string()))
}

#[cfg(test)]
mod tests {
    use envoy_types::{
        pb::{
            envoy::config::core::v3::DataSource,
            google::protobuf::{Any, Value},
        },
        util::pack_any,
    };

    use super::*;

    fn logger(any: Any) -> AccessLog {
        AccessLog {
            name: "log".into(),
            filter: None,
            config_type: Some(ConfigType::TypedConfig(any)),
        }
    }

    fn file(format: Option<file_access_log::AccessLogFormat>) -> AccessLog {
        logger(pack_any(FileAccessLog {
            path: "/tmp/access.log".into(),
            access_log_format: format,
        }))
    }

    #[test]
    fn file_loggers_with_each_format_kind() {
        let plan = AccessLogPlan::from_protos(&[file(None)]).unwrap();
        assert_eq!(plan[0].path, "/tmp/access.log");
        assert_eq!(
            plan[0].format,
            LogFormat::text(DEFAULT_TEXT_FORMAT).unwrap()
        );

        let source = SubstitutionFormatString {
            format: Some(substitution_format_string::Format::TextFormatSource(
                DataSource {
                    specifier: Some(data_source::Specifier::InlineString(
                        "%RESPONSE_CODE%".into(),
                    )),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let plan = AccessLogPlan::from_protos(&[file(Some(
            file_access_log::AccessLogFormat::LogFormat(source),
        ))])
        .unwrap();
        assert_eq!(plan[0].format, LogFormat::text("%RESPONSE_CODE%").unwrap());

        let json = Struct {
            fields: [
                ("z".to_string(), "%DURATION%"),
                ("a".to_string(), "%PROTOCOL%"),
            ]
            .into_iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.into())),
                };
                (k, value)
            })
            .collect(),
        };
        let plan = AccessLogPlan::from_protos(&[file(Some(
            file_access_log::AccessLogFormat::JsonFormat(json),
        ))])
        .unwrap();
        assert_eq!(
            plan[0].format,
            LogFormat::json([("a", "%PROTOCOL%"), ("z", "%DURATION%")]).unwrap()
        );
    }

    #[test]
    fn stdout_loggers_write_to_stdout() {
        let plan =
            AccessLogPlan::from_protos(&[logger(pack_any(StdoutAccessLog::default()))]).unwrap();
        assert_eq!(plan[0].path, "/dev/stdout");
    }

    #[test]
    fn what_cannot_be_logged_exactly_is_refused_with_the_field() {
        let bad = file(Some(file_access_log::AccessLogFormat::Format(
            "%NOT_AN_OPERATOR%".into(),
        )));
        let error = AccessLogPlan::from_protos(&[file(None), bad]).unwrap_err();
        assert_eq!(error.field, "access_log[1].typed_config.format");
        assert!(error.reason.contains("NOT_AN_OPERATOR"), "{error}");

        let mut filtered = file(None);
        filtered.filter = Some(Default::default());
        assert_eq!(
            AccessLogPlan::from_protos(&[filtered]).unwrap_err().field,
            "access_log[0].filter"
        );
        let other = logger(Any {
            type_url: "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig".into(),
            value: Vec::new(),
        });
        assert!(
            AccessLogPlan::from_protos(&[other])
                .unwrap_err()
                .reason
                .contains("not supported")
        );
    }
}

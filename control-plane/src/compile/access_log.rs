//! A virtual node's (or gateway's) `logging.accessLog.file` as Envoy's file access logger on
//! every HTTP connection manager and TCP proxy of its listeners, as App Mesh configured it:
//! the path, and the format as a text format source or a JSON format (no format: Envoy's
//! default text line).
use envoy_types::pb::{
    envoy::{
        config::{
            accesslog::v3::{AccessLog, access_log},
            listener::v3::{Filter, FilterChain, Listener, filter::ConfigType},
        },
        extensions::{
            access_loggers::file::v3::FileAccessLog,
            filters::network::{
                http_connection_manager::v3::HttpConnectionManager, tcp_proxy::v3::TcpProxy,
            },
        },
    },
    google::protobuf::{Any, Struct, Value, value::Kind},
};
use mesh_model::types::LoggingFormat;
use prost::{
    Message, Name,
    encoding::{WireType, encode_key, encode_varint},
};

/// Envoy's name for the file access logger.
pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";
/// `FileAccessLog.log_format` and `SubstitutionFormatString`'s text source and JSON format.
const LOG_FORMAT_FIELD: u32 = 5;
const TEXT_FORMAT_SOURCE_FIELD: u32 = 5;
const JSON_FORMAT_FIELD: u32 = 2;
/// `DataSource.inline_string`.
const INLINE_STRING_FIELD: u32 = 3;

/// The access log of a virtual node or gateway whose `logging.accessLog.file` is `path`
/// with `format` (validated: the model's checks parse every format).
pub fn file(path: &str, format: Option<&LoggingFormat>) -> AccessLog {
    // Encoded by hand rather than through prost's `Struct`: its fields are a HashMap, whose
    // order changes from one compile to the next, and the control plane pushes a resource
    // again whenever its bytes change. Keys go in the order written (as one-entry Structs,
    // which protobuf merges), so the same mesh always compiles to the same bytes.
    let mut log_format = Vec::new();
    match format {
        None => {}
        Some(LoggingFormat::Text(text)) => {
            let mut source = Vec::new();
            length_delimited(INLINE_STRING_FIELD, text.as_bytes(), &mut source);
            length_delimited(TEXT_FORMAT_SOURCE_FIELD, &source, &mut log_format);
        }
        Some(LoggingFormat::Json(pairs)) => {
            let mut json = Vec::new();
            for pair in pairs {
                let entry = Struct {
                    fields: [(
                        pair.key.clone(),
                        Value {
                            kind: Some(Kind::StringValue(pair.value.clone())),
                        },
                    )]
                    .into(),
                };
                entry.encode_raw(&mut json);
            }
            length_delimited(JSON_FORMAT_FIELD, &json, &mut log_format);
        }
    }
    let mut value = FileAccessLog {
        path: path.to_owned(),
        access_log_format: None,
    }
    .encode_to_vec();
    if format.is_some() {
        length_delimited(LOG_FORMAT_FIELD, &log_format, &mut value);
    }
    AccessLog {
        name: FILE_ACCESS_LOG.into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(Any {
            type_url: FileAccessLog::type_url(),
            value,
        })),
    }
}

fn length_delimited(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Puts `logs` on every HTTP connection manager and TCP proxy of `listener`.
pub fn attach(listener: &mut Listener, logs: &[AccessLog]) {
    if logs.is_empty() {
        return;
    }
    let chains = listener
        .filter_chains
        .iter_mut()
        .chain(listener.default_filter_chain.as_mut());
    for filter in chains.flat_map(|chain: &mut FilterChain| chain.filters.iter_mut()) {
        attach_to_filter(filter, logs);
    }
}

fn attach_to_filter(filter: &mut Filter, logs: &[AccessLog]) {
    let Some(ConfigType::TypedConfig(config)) = &mut filter.config_type else {
        return;
    };
    if config.type_url == HttpConnectionManager::type_url() {
        if let Ok(mut manager) = HttpConnectionManager::decode(config.value.as_slice()) {
            manager.access_log = logs.to_vec();
            config.value = manager.encode_to_vec();
        }
    } else if config.type_url == TcpProxy::type_url()
        && let Ok(mut proxy) = TcpProxy::decode(config.value.as_slice())
    {
        proxy.access_log = logs.to_vec();
        config.value = proxy.encode_to_vec();
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::{
        config::core::v3::{data_source, substitution_format_string::Format},
        extensions::access_loggers::file::v3::file_access_log::AccessLogFormat,
    };
    use mesh_model::types::JsonFormatRef;

    use super::*;

    fn decoded(log: &AccessLog) -> FileAccessLog {
        let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
            panic!("typed config")
        };
        FileAccessLog::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn text_formats_are_inline_text_sources() {
        let log = decoded(&file(
            "/dev/stdout",
            Some(&LoggingFormat::Text("%RESPONSE_CODE%\n".into())),
        ));
        assert_eq!(log.path, "/dev/stdout");
        let Some(AccessLogFormat::LogFormat(format)) = log.access_log_format else {
            panic!("log_format")
        };
        let Some(Format::TextFormatSource(source)) = format.format else {
            panic!("text source")
        };
        assert_eq!(
            source.specifier,
            Some(data_source::Specifier::InlineString(
                "%RESPONSE_CODE%\n".into()
            ))
        );
    }

    #[test]
    fn json_formats_decode_and_always_encode_the_same() {
        let pairs: Vec<JsonFormatRef> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|key| JsonFormatRef {
                key: (*key).into(),
                value: format!("%REQ({key})%"),
            })
            .collect();
        let format = LoggingFormat::Json(pairs);
        let first = file("/var/log/x", Some(&format));
        for _ in 0..10 {
            assert_eq!(file("/var/log/x", Some(&format)), first);
        }
        let Some(AccessLogFormat::LogFormat(format)) = decoded(&first).access_log_format else {
            panic!("log_format")
        };
        let Some(Format::JsonFormat(json)) = format.format else {
            panic!("json")
        };
        assert_eq!(json.fields.len(), 5);
        assert_eq!(
            json.fields["c"].kind,
            Some(Kind::StringValue("%REQ(c)%".into()))
        );
    }

    #[test]
    fn no_format_means_envoys_default() {
        assert_eq!(decoded(&file("/dev/stdout", None)).access_log_format, None);
    }
}

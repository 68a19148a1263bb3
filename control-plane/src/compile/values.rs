//! Envoy protobuf values the compilers share: the ADS config source, socket addresses, and
//! App Mesh numbers and durations in Envoy's types.
use envoy_types::pb::{
    envoy::config::core::v3::{
        self as core, AggregatedConfigSource, ApiVersion, ConfigSource,
        config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
    },
    google::protobuf::{Duration as PbDuration, UInt32Value},
};
use mesh_model::types::{Duration, DurationUnit};

pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub(super) fn socket_address(host: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

pub(super) fn u32_value(value: i64) -> Option<UInt32Value> {
    u32::try_from(value).ok().map(|value| UInt32Value { value })
}

/// An App Mesh duration (`{"unit": "s", "value": 15}`); none when it has no value.
pub(super) fn duration(d: &Duration) -> Option<PbDuration> {
    let value = d.value?;
    Some(match d.unit.unwrap_or(DurationUnit::Ms) {
        DurationUnit::S => PbDuration {
            seconds: value,
            nanos: 0,
        },
        DurationUnit::Ms => millis(value),
    })
}

pub(super) fn millis(value: i64) -> PbDuration {
    PbDuration {
        seconds: value / 1000,
        nanos: ((value % 1000) * 1_000_000) as i32,
    }
}

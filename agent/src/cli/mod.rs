//! The `mesh-agent` command line: argument structs, turned into the plain options of the
//! libraries (the agent, the control plane) before they are called.
pub mod control_plane;
pub mod gateway;
pub mod mesh;
pub mod xds_dump;
pub mod xds_tls;

/// The error and its causes as one line (`a: b: c`), each said once: a cause whose text the
/// line already holds (an error that prints its source in its own message) is left out.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("config file a.yaml: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::other("no such file");
        let error = anyhow::Error::from(Repeats { source: io() }).context("loading");
        assert_eq!(
            error_line(&error),
            "loading: config file a.yaml: no such file"
        );
        let error = anyhow::Error::from(io()).context("reading b");
        assert_eq!(error_line(&error), "reading b: no such file");
    }
}

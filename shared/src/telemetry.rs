//! Tracing initialisation, once per process: JSON lines when running in Lambda
//! (CloudWatch parses them), human-readable text locally.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::Env;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `LOG_FORMAT` (`json` / `text`) wins; then Lambda's own `AWS_LAMBDA_LOG_FORMAT`;
    /// then JSON inside Lambda (`AWS_LAMBDA_FUNCTION_NAME` is set) and text elsewhere.
    pub fn detect(env: &Env) -> LogFormat {
        let explicit = env
            .get("LOG_FORMAT")
            .ok()
            .flatten()
            .or_else(|| env.get("AWS_LAMBDA_LOG_FORMAT").ok().flatten());
        match explicit.map(str::to_ascii_lowercase).as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            _ if matches!(env.get("AWS_LAMBDA_FUNCTION_NAME"), Ok(Some(_))) => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// The filter: `RUST_LOG` if set, else `AWS_LAMBDA_LOG_LEVEL` / `LOG_LEVEL`, else `info`.
fn filter(env: &Env) -> EnvFilter {
    let directive = ["RUST_LOG", "AWS_LAMBDA_LOG_LEVEL", "LOG_LEVEL"]
        .into_iter()
        .find_map(|var| env.get(var).ok().flatten())
        .unwrap_or("info")
        .to_ascii_lowercase();
    EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. A second call (tests) leaves the first in place.
pub fn init(env: &Env) {
    let builder = fmt()
        .with_env_filter(filter(env))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _already_set = match LogFormat::detect(env) {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_lambda_text_elsewhere_and_overridable() {
        assert_eq!(LogFormat::detect(&Env::default()), LogFormat::Text);
        let lambda = Env::from_pairs([("AWS_LAMBDA_FUNCTION_NAME", "create-order")]);
        assert_eq!(LogFormat::detect(&lambda), LogFormat::Json);
        let forced = Env::from_pairs([("AWS_LAMBDA_FUNCTION_NAME", "f"), ("LOG_FORMAT", "text")]);
        assert_eq!(LogFormat::detect(&forced), LogFormat::Text);
        let aws = Env::from_pairs([("AWS_LAMBDA_LOG_FORMAT", "JSON")]);
        assert_eq!(LogFormat::detect(&aws), LogFormat::Json);
    }
}

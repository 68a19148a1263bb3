//! Which traces are recorded: the caller's decision when the request carries one (so every
//! hop of a trace agrees), else a share of trace ids. The share is taken from the trace id,
//! not a coin toss per hop, so two proxies that both see an undecided trace decide alike.
use super::ids::TraceId;

#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    /// Traces whose id's low 64 bits are below this are sampled; `None`: all are.
    threshold: Option<u64>,
}

impl Sampler {
    /// `rate`: the share of traces to sample, 0 to 1 (checked by the configuration).
    pub fn new(rate: f64) -> Self {
        let threshold = (rate < 1.0).then(|| (rate.max(0.0) * u64::MAX as f64) as u64);
        Self { threshold }
    }

    pub fn sample(&self, trace: TraceId, caller: Option<bool>) -> bool {
        caller.unwrap_or_else(|| self.threshold.is_none_or(|t| trace.low_u64() < t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_decision_stands_whatever_the_rate() {
        let trace = TraceId::generate();
        assert!(Sampler::new(0.0).sample(trace, Some(true)));
        assert!(!Sampler::new(1.0).sample(trace, Some(false)));
    }

    #[test]
    fn undecided_traces_are_sampled_at_the_rate() {
        let sampler = Sampler::new(0.25);
        let sampled = (0..20_000)
            .filter(|_| sampler.sample(TraceId::generate(), None))
            .count();
        assert!(
            (4_400..=5_600).contains(&sampled),
            "{sampled} of 20000 at 0.25"
        );
        assert_eq!(
            (0..1000)
                .filter(|_| Sampler::new(0.0).sample(TraceId::generate(), None))
                .count(),
            0
        );
        assert!(Sampler::new(1.0).sample(TraceId::generate(), None));
    }

    #[test]
    fn one_trace_is_decided_alike_everywhere() {
        let sampler = Sampler::new(0.5);
        for _ in 0..100 {
            let trace = TraceId::generate();
            assert_eq!(sampler.sample(trace, None), sampler.sample(trace, None));
        }
    }
}

//! One way to declare a service's Prometheus metrics: [`metric_set!`]
//! writes the struct, its registry and the registration from one list, so
//! a metric's name, type, help text and initial value stand in one place.
//! Each service instance owns its set (no global recorder), so tests can run
//! several bridges and gateways in one process and read each one's numbers.

pub use prometheus_client;

use prometheus_client::encoding::EncodeLabelSet;

/// The label set `{kind="…"}`, shared by both services' metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The label set `{reason="…"}`, shared by both services' metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The content type of [`metric_set!`]'s `encode()`: prometheus-client
/// writes the OpenMetrics text format (it ends with `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Declares a struct of metrics registered under `prefix`; a field's name is
/// the metric's name after the prefix (counters gain `_total` on export) and
/// its doc comment is the metric's help text. The service writes `new()`
/// (what it shows from the start) on top of the generated `register()`;
/// `Default` is `new()`.
///
/// ```
/// use fieldcast_service::metric_set;
/// use prometheus_client::metrics::counter::Counter;
///
/// metric_set! {
///     /// The example's metrics.
///     pub struct Metrics in "example" {
///         /// Things done
///         pub done: Counter = Counter::default(),
///     }
/// }
///
/// impl Metrics {
///     pub fn new() -> Self {
///         Self::register()
///     }
/// }
///
/// let m = Metrics::default();
/// m.done.inc();
/// assert!(m.encode().contains("example_done_total 1"));
/// ```
#[macro_export]
macro_rules! metric_set {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in $prefix:literal {
            $(
                $(#[doc = $help:literal])+
                $fvis:vis $field:ident : $ty:ty = $init:expr
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            registry: $crate::metrics::prometheus_client::registry::Registry,
            $( $(#[doc = $help])+ $fvis $field: $ty, )*
        }

        impl $name {
            /// Every metric at its initial value, registered; the
            /// service's own constructor adds what it shows from the start
            /// (label values at zero, a gauge's resting value).
            fn register() -> Self {
                let mut registry =
                    $crate::metrics::prometheus_client::registry::Registry::with_prefix($prefix);
                $(
                    let $field: $ty = $init;
                    registry.register(
                        stringify!($field),
                        concat!($($help),+).trim(),
                        $field.clone(),
                    );
                )*
                $name { registry, $($field),* }
            }

            /// Prometheus text exposition.
            pub fn encode(&self) -> String {
                let mut out = String::new();
                // Writing into a String cannot fail.
                let _ = $crate::metrics::prometheus_client::encoding::text::encode(
                    &mut out,
                    &self.registry,
                );
                out
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

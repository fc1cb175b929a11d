//! What the server and client log, captured for tests that assert on it.
//!
//! [`Logs::capture`] installs one global subscriber per test binary (the first call does; later
//! calls share it) that keeps every event: its level, target, message and fields, with the
//! fields of the spans it happened in. Tests in one binary run side by side, so a test picks
//! its own events out by a field only it has (a port, a name) rather than counting them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;
use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One logged event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its level.
    pub level: Level,
    /// Its target (`wmproxy::access`, a module path).
    pub target: String,
    /// Its message.
    pub message: String,
    /// Its fields, with those of its spans (the event's own win).
    pub fields: HashMap<String, String>,
}

impl Event {
    /// The field `name`, or "" when absent.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

/// Every event logged in this test binary so far.
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<Event>>>);

static GLOBAL: OnceLock<Logs> = OnceLock::new();

impl Logs {
    /// The binary's capture, installed as the global subscriber on first use. Debug events are
    /// kept too.
    pub fn capture() -> Logs {
        GLOBAL
            .get_or_init(|| {
                let logs = Logs::default();
                let subscriber = tracing_subscriber::registry().with(Capture(logs.clone()));
                // Fails only if another global subscriber is set; the capture then stays empty
                // and the test that needs it fails on its assertion.
                let _ = tracing::subscriber::set_global_default(subscriber);
                logs
            })
            .clone()
    }

    /// The events so far that satisfy `pred`.
    pub fn matching(&self, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|e| pred(e)).cloned().collect()
    }

    /// Waits (polling, within [`crate::DEADLINE`]) for an event that satisfies `pred`, and
    /// returns it.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        crate::eventually(what, || !self.matching(&pred).is_empty()).await?;
        self.matching(&pred).into_iter().next().ok_or_else(|| anyhow::anyhow!("{what}: gone"))
    }
}

struct Capture(Logs);

/// Fields recorded on a span, kept in its extensions.
struct SpanFields(HashMap<String, String>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut Fields(&mut fields.0));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<SpanFields>() {
                    fields.extend(span_fields.0.clone());
                }
            }
        }
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let meta = event.metadata();
        let captured = Event { level: *meta.level(), target: meta.target().to_owned(), message, fields };
        (self.0).0.lock().unwrap_or_else(|p| p.into_inner()).push(captured);
    }
}

//! Reading `/metrics` as Prometheus does: samples with their labels parsed (in the order
//! written, escapes undone), so tests compare label sets exactly instead of by substring.

use anyhow::{Context, Result, bail};

/// One sample of the Prometheus text format: its labels in the order written, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// A label's value (unescaped), if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(name, value)` of `want` is one of the sample's labels.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|&(k, v)| self.label(k) == Some(v))
    }
}

/// Every sample of metric `name` (exactly that name, e.g. `istio_tcp_sent_bytes_total`),
/// labels parsed as the exposition format writes them (`\\`, `\"` and `\n` escapes). A
/// sample line that does not parse fails the test: the exposition must be well formed.
pub fn metric_samples(text: &str, name: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(body) = rest.strip_prefix('{') {
            let mut labels = Vec::new();
            let mut chars = body.char_indices().peekable();
            let end = loop {
                let Some(&(i, c)) = chars.peek() else {
                    bail!("unterminated labels in {line:?}");
                };
                if c == '}' {
                    break i;
                }
                if c == ',' {
                    chars.next();
                    continue;
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                anyhow::ensure!(
                    chars.next().map(|(_, c)| c) == Some('"'),
                    "label {key} without a quoted value in {line:?}"
                );
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => bail!("dangling escape in {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated label value in {line:?}"),
                    }
                }
                labels.push((key, value));
            };
            (labels, &body[end + 1..])
        } else if rest.starts_with(' ') {
            (Vec::new(), rest)
        } else {
            // Another metric whose name starts with `name`.
            continue;
        };
        let value = value
            .trim()
            .parse::<f64>()
            .with_context(|| format!("no value in {line:?}"))?;
        out.push(Sample { labels, value });
    }
    Ok(out)
}

/// Sum of the samples of `name` that have every `(label, value)` of `want`.
pub fn metric_value(text: &str, name: &str, want: &[(&str, &str)]) -> Result<f64> {
    Ok(metric_samples(text, name)?
        .iter()
        .filter(|s| s.has(want))
        .map(|s| s.value)
        .sum())
}

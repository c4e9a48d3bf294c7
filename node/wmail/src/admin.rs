//! The admin commands (`wmail domain|account|alias|cluster ...`): thin clients of a node's
//! admin API, so they work the same against any node.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::serve::ADMIN_TOKEN_FILE;

/// Where and how to reach the admin API.
pub struct AdminClient {
    http: reqwest::Client,
    server: String,
    token: String,
    /// Print JSON instead of tables.
    pub json: bool,
}

impl AdminClient {
    /// Finds the token (`--token`, `WMAIL_TOKEN`, or the data directory's token file).
    pub fn new(server: String, token: Option<String>, data_dir: PathBuf, json: bool) -> anyhow::Result<Self> {
        let token = match token {
            Some(token) => token,
            None => {
                let path = data_dir.join(ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path).map(|t| t.trim().to_owned()).map_err(|_| {
                    anyhow::anyhow!(
                        "no admin token: pass --token, set WMAIL_TOKEN, or run on the node (with --data-dir) where {} exists",
                        path.display()
                    )
                })?
            }
        };
        Ok(Self { http: reqwest::Client::new(), server: server.trim_end_matches('/').to_owned(), token, json })
    }

    /// Calls the API; returns the JSON body (or `Null` for 204), or the API's error message.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.server);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.map_err(|error| {
            anyhow::anyhow!(
                "cannot reach the admin API at {}: {error}; is `wmail serve` running there? (use --server URL)",
                self.server
            )
        })?;
        let status = response.status();
        let text = response.text().await.context("reading the API response")?;
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
        if status == StatusCode::UNAUTHORIZED {
            bail!("{message} (check --token / WMAIL_TOKEN)");
        }
        bail!("{message}")
    }

    /// Prints `value` as JSON, or `text` for people.
    pub fn print(&self, value: &Value, text: impl FnOnce(&Value) -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("json"));
        } else {
            let text = text(value);
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }
}

/// A progress line on stderr for long operations: redrawn in place on a terminal, a line
/// every few seconds otherwise (logs, CI).
pub struct ProgressBar {
    label: &'static str,
    started: std::time::Instant,
    last_line: Option<std::time::Instant>,
    terminal: bool,
}

impl ProgressBar {
    /// Starts timing an operation.
    pub fn new(label: &'static str) -> Self {
        use std::io::IsTerminal;
        Self { label, started: std::time::Instant::now(), last_line: None, terminal: std::io::stderr().is_terminal() }
    }

    /// Shows `done` of `total`, the rate and the time left.
    pub fn show(&mut self, done: u64, total: u64) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / elapsed.max(0.001);
        let eta = if rate > 0.0 { format!("{:.0} s", total.saturating_sub(done) as f64 / rate) } else { "?".into() };
        let filled = (done * 30).checked_div(total).unwrap_or(0).min(30) as usize;
        let line = format!(
            "{} [{}{}] {done}/{total} messages, {rate:.0}/s, ETA {eta}",
            self.label,
            "#".repeat(filled),
            "-".repeat(30 - filled)
        );
        if self.terminal {
            eprint!("\r{line}  ");
        } else if self.last_line.is_none_or(|last| last.elapsed() >= std::time::Duration::from_secs(2)) {
            eprintln!("{line}");
            self.last_line = Some(std::time::Instant::now());
        }
    }

    /// Ends the progress line.
    pub fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

/// Reads a password from stdin (first line), or generates one when asked.
pub fn read_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            bail!(
                "--password-stdin got an empty line; pipe the password, e.g. `echo 'secret pass' | wmail account add ...`"
            );
        }
        return Ok((password, false));
    }
    if !std::io::stdin().is_terminal() {
        tracing::debug!("stdin is not a terminal and --password-stdin was not given: generating a password");
    }
    let alphabet = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let password: String = (0..16).map(|_| alphabet[rand::random::<usize>() % alphabet.len()] as char).collect();
    Ok((password, true))
}

/// Percent-encodes one URL path segment or query value (RFC 3986 §2.3: everything but
/// unreserved characters and `@`), so addresses with `/`, `?`, `#` or `%` stay intact.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Parses a size like `500M`, `2G`, `1.5G` or `1048576` (binary multiples).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size; use e.g. 500M or 2G"))?;
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}; use K, M, G or T")),
    };
    Ok((number * multiplier as f64) as u64)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Formats one account for people.
pub fn account_line(account: &Value) -> String {
    let quota = account["quota_bytes"].as_u64().map(human_size).unwrap_or_else(|| "unlimited".into());
    format!(
        "{:<40} {:<10} {:>10} / {:<10} {} msgs  {}",
        account["address"].as_str().unwrap_or_default(),
        account["state"].as_str().unwrap_or_default(),
        human_size(account["used_bytes"].as_u64().unwrap_or(0)),
        quota,
        account["message_count"].as_u64().unwrap_or(0),
        account["name"].as_str().unwrap_or_default(),
    )
}

/// Builds the JSON for creating an account.
pub fn new_account_body(address: &str, password: &str, name: Option<&str>, quota: Option<u64>) -> Value {
    json!({ "address": address, "password": password, "name": name.unwrap_or_default(), "quota_bytes": quota })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("alice@example.com"), "alice@example.com");
        assert_eq!(encode("a/b?c#d%e f@x.test"), "a%2Fb%3Fc%23d%25e%20f@x.test");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
    }
}

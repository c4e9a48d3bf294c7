//! `wmail`: runs a mail server node (`wmail serve`) and administers one (`wmail domain`,
//! `wmail account`, ...). See `wmail --help`.

mod admin;
mod config;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::json;

use crate::admin::{AdminClient, account_line, encode, new_account_body, parse_size, read_password};
use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "wmail",
    version,
    about = "wmail: a clustered mail server",
    after_help = "Start a node with `wmail serve`, then `wmail domain add example.com`."
)]
struct Cli {
    /// Admin API of the node to administer.
    #[arg(long, global = true, env = "WMAIL_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Admin token (default: the admin-token file in --data-dir).
    #[arg(long, global = true, env = "WMAIL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory (for `serve`, and to find the admin token).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (no flags: a one-node cluster in ./wmail-data).
    #[command(after_help = "Examples: wmail serve --config /etc/wmail/wmail.toml\n  \
        joining a cluster (empty data directory, token from `wmail cluster token` on a member):\n  \
        wmail serve --config node2.toml --join 10.0.0.1:7443 --join-token wmail1.…")]
    Serve {
        /// Config file (TOML); see `wmail config example`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A member's cluster address to join at on first start (same as `[cluster] join`).
        #[arg(long, requires = "join_token")]
        join: Option<String>,
        /// The one-time token from `wmail cluster token` (same as `[cluster] join_token`).
        #[arg(long, requires = "join")]
        join_token: Option<String>,
    },
    /// Print or check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage local domains.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Manage aliases.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Operate on the node the command talks to.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Inspect and manage the outbound queue (mail for other domains).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Inspect and rebuild the node's full-text search index.
    #[command(subcommand)]
    Search(SearchCommand),
    /// Login blocks and the inbound checks' verdicts.
    #[command(subcommand)]
    Security(SecurityCommand),
    /// Messages the inbound checks held in quarantine, and senders accounts always accept.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List held messages, of one account or all.
    List { address: Option<String> },
    /// Deliver a held message to the account's INBOX.
    Release { address: String, id: u64 },
    /// Delete a held message without delivering it.
    Delete { address: String, id: u64 },
    /// Make the account always accept a sender (its mail skips the spam thresholds).
    #[command(after_help = "Example: wmail quarantine allow alice@example.com news@partner.example")]
    Allow { address: String, sender: String },
    /// Stop always accepting a sender.
    Disallow { address: String, sender: String },
    /// List the senders an account always accepts.
    Allowed { address: String },
    /// Send every account its digest of newly held messages now.
    Notify,
}

#[derive(Subcommand)]
enum SecurityCommand {
    /// Login blocks (too many failed logins), held by every node.
    #[command(subcommand)]
    Blocks(BlocksCommand),
    /// The inbound checks' verdicts on messages received by the node asked, newest first.
    #[command(after_help = "Example: wmail security verdicts --sender someone@example.net")]
    Verdicts {
        /// Only this Message-ID.
        #[arg(long)]
        message_id: Option<String>,
        /// Only this sender (envelope or From:).
        #[arg(long)]
        sender: Option<String>,
        /// Show at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum BlocksCommand {
    /// List the blocks in force.
    List,
    /// Lift a block on every node: KIND is `address` or `account`.
    #[command(after_help = "Example: wmail security blocks remove account alice@example.com")]
    Remove { kind: String, key: String },
}

#[derive(Subcommand)]
enum SearchCommand {
    /// Show the index's size and what SEARCH read.
    Status,
    /// Rebuild the index of one account, or of every account, with progress. Only the node
    /// the command talks to is reindexed (each node keeps its own index).
    #[command(after_help = "Examples: wmail search reindex\n  wmail search reindex alice@example.com")]
    Reindex {
        /// The account's address (default: every account).
        account: Option<String>,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List queued messages, oldest first.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one queued message with each recipient's status and last reply.
    Show { id: u64 },
    /// Try a queued message again now.
    Retry { id: u64 },
    /// Try every queued message again now (like Postfix's `postqueue -f`).
    Flush,
    /// Remove a queued message without delivering it further (no bounce is sent).
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a fully commented config file with the defaults.
    Example,
    /// Validate a config file and say what is wrong and where.
    #[command(after_help = "Example: wmail config check /etc/wmail/wmail.toml")]
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Add a local domain, or a domain alias with --alias-of.
    #[command(
        after_help = "Examples: wmail domain add example.com\n          wmail domain add example.net --alias-of example.com"
    )]
    Add {
        name: String,
        /// Make NAME an alias: mail for x@NAME goes to x@TARGET.
        #[arg(long, value_name = "TARGET")]
        alias_of: Option<String>,
    },
    /// Forward mail for unknown local parts (when there is no catch-all) to another server,
    /// e.g. the old one during a migration; without HOST:PORT, stop forwarding.
    #[command(after_help = "Example: wmail domain forward-unknown example.com old-mx.example.com:25")]
    ForwardUnknown {
        name: String,
        #[arg(value_name = "HOST:PORT")]
        target: Option<String>,
    },
    /// Set the catch-all address for unknown local parts; without ADDRESS, remove it.
    #[command(after_help = "Example: wmail domain catch-all example.com postmaster@example.com")]
    CatchAll { name: String, address: Option<String> },
    /// Disable services (smtp, pop3, imap, web) for every account of a domain; `--disable
    /// none` enables them all again.
    #[command(after_help = "Example: wmail domain services example.com --disable pop3 --disable imap")]
    Services {
        name: String,
        /// A service to disable (repeatable), or `none`.
        #[arg(long = "disable", value_name = "SERVICE", required = true)]
        disable: Vec<String>,
    },
    /// List local domains.
    List,
    /// Remove a domain (it must have no accounts or aliases left).
    #[command(after_help = "Example: wmail domain remove example.com")]
    Remove { name: String },
    /// Manage the domain's DKIM signing keys.
    #[command(subcommand)]
    Dkim(DkimCommand),
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Generate a key and print the DNS TXT record to publish. The domain's first key signs
    /// at once; a later one (rotation) only after `activate`, once its record is published.
    #[command(after_help = "Example: wmail domain dkim generate example.com --algorithm ed25519 --selector s2")]
    Generate {
        domain: String,
        /// The selector (default: wmail<yyyymmdd>).
        #[arg(long)]
        selector: Option<String>,
        /// rsa (2048 bits, understood everywhere) or ed25519 (RFC 8463).
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        /// Sign with the new key at once.
        #[arg(long)]
        activate: bool,
    },
    /// List the domain's keys and their DNS records.
    List { domain: String },
    /// Sign with this selector from now on.
    Activate { domain: String, selector: String },
    /// Remove a key (not the active one while others exist).
    Remove { domain: String, selector: String },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account; without --password-stdin a password is generated and printed.
    #[command(
        after_help = "Example: echo 'long secret' | wmail account add alice@example.com --password-stdin --quota 2G --name \"Alice Smith\""
    )]
    Add {
        address: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Quota, e.g. 500M or 2G (default: unlimited).
        #[arg(long, value_parser = parse_size)]
        quota: Option<u64>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List accounts, of one domain or all.
    List { domain: Option<String> },
    /// Show one account.
    Show { address: String },
    /// Remove an account and all its mail.
    Remove { address: String },
    /// Change an account's service permissions and sender grants. A list given replaces
    /// the old one; `none` empties it.
    #[command(
        after_help = "Examples: wmail account access alice@example.com --disable pop3\n          wmail account access alice@example.com --send-as sales@example.com --send-as @example.org"
    )]
    Access {
        address: String,
        /// A service to disable: smtp, pop3, imap, web (repeatable), or `none`.
        #[arg(long = "disable", value_name = "SERVICE")]
        disable: Vec<String>,
        /// An extra sender address, `@domain` for a whole domain (repeatable), or `none`.
        #[arg(long = "send-as", value_name = "ADDRESS")]
        send_as: Vec<String>,
    },
    /// Change an account's password.
    #[command(after_help = "Example: echo 'new secret' | wmail account passwd alice@example.com --password-stdin")]
    Passwd {
        address: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum AliasCommand {
    /// Create an alias that forwards to one or more addresses.
    #[command(after_help = "Example: wmail alias add sales@example.com alice@example.com bob@example.com")]
    Add {
        alias: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove an alias.
    Remove { alias: String },
    /// List aliases, of one domain or all.
    List { domain: Option<String> },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Stop taking sessions before an upgrade: close the mail listeners, answer 503 on
    /// /readyz (load balancers move away), hand leadership to another voter, and wait for
    /// open sessions to end. Then stop the node (SIGTERM), upgrade, and start it again.
    #[command(after_help = "Example: wmail --server http://node2:8080 node drain --grace 120")]
    Drain {
        /// Seconds open sessions may take to end.
        #[arg(long, default_value_t = 60)]
        grace: u64,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Show every member's role, state, log position and lag.
    Status,
    /// Print a one-time join token for a new node (valid one day).
    #[command(after_help = "Example: wmail cluster token, then on the new node:\n  \
        wmail serve --config node.toml --join THIS-NODE:7443 --join-token <token>")]
    Token {
        /// The new node stays a non-voting learner (a branch office).
        #[arg(long)]
        learner: bool,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// Remove a node from the cluster (stop it afterwards).
    Leave { node: u64 },
    /// Make a learner a voter (at most five vote).
    Promote { node: u64 },
    /// Make a voter a learner.
    Demote { node: u64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // By default: openraft's replication errors, which repeat every heartbeat while a peer
    // is down, are off (consensus logs each peer that stops or starts answering once), and
    // rustls's warning about clients that send an IP address as SNI (PHP does) is hidden.
    let filter = tracing_subscriber::EnvFilter::try_from_env("WMAIL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,openraft::replication=off,rustls=error")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    // One rustls crypto provider for the whole process (several dependencies could bring one).
    wmail_net::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.clone();
    let client = || {
        AdminClient::new(
            cli.server.clone(),
            cli.token.clone(),
            data_dir.clone().unwrap_or_else(|| PathBuf::from("./wmail-data")),
            cli.json,
        )
    };
    match cli.command {
        Command::Serve { config, join, join_token } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(data_dir) = data_dir {
                config.server.data_dir = data_dir;
            }
            if let (Some(join), Some(token)) = (join, join_token) {
                config.cluster.join = join;
                config.cluster.join_token = token;
                config.validate()?;
            }
            serve::run(config).await
        }
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            Config::load(Some(&file))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Domain(command) => domain(client()?, command).await,
        Command::Account(command) => account(client()?, command).await,
        Command::Alias(command) => alias(client()?, command).await,
        Command::Queue(command) => queue(client()?, command).await,
        Command::Cluster(command) => cluster(client()?, command).await,
        Command::Search(command) => search(client()?, command).await,
        Command::Security(command) => security(client()?, command).await,
        Command::Quarantine(command) => quarantine(client()?, command).await,
        Command::Node(NodeCommand::Drain { grace }) => {
            let client = client()?;
            let report = client.call(Method::POST, "/node/drain", Some(json!({ "grace_seconds": grace }))).await?;
            client.print(&report, |r| {
                let handed = if r["was_leader"] == json!(true) {
                    format!("; leadership handed to node {}", r["leader"])
                } else {
                    String::new()
                };
                let sessions = if r["drained"] == json!(true) {
                    "every session has ended"
                } else {
                    "some sessions were still open when the grace period ended"
                };
                format!("drained: no new sessions{handed}; {sessions}. Stop the node now (SIGTERM).")
            });
            Ok(())
        }
    }
}

async fn domain(client: AdminClient, command: DomainCommand) -> anyhow::Result<()> {
    match command {
        DomainCommand::Add { name, alias_of } => {
            let body = json!({ "name": name, "alias_of": alias_of });
            let domain = client.call(Method::POST, "/domains", Some(body)).await?;
            client.print(&domain, |d| match d["alias_of"].as_str() {
                Some(target) => format!("added domain alias {} -> {target}", d["name"].as_str().unwrap_or_default()),
                None => format!("added domain {}", d["name"].as_str().unwrap_or_default()),
            });
        }
        DomainCommand::Services { name, disable } => {
            let body = json!({ "disabled_services": list_argument(&disable) });
            let domain = client.call(Method::PATCH, &format!("/domains/{}", encode(&name)), Some(body)).await?;
            client.print(&domain, |d| format!("disabled services of {name}: {}", d["disabled_services"]));
        }
        DomainCommand::CatchAll { name, address } => {
            let path = format!("/domains/{}", encode(&name));
            let domain = client.call(Method::PATCH, &path, Some(json!({ "catch_all": address }))).await?;
            client.print(&domain, |d| match d["catch_all"].as_str() {
                Some(address) => format!("unknown addresses of {name} now go to {address}"),
                None => format!("unknown addresses of {name} are now rejected"),
            });
        }
        DomainCommand::ForwardUnknown { name, target } => {
            let path = format!("/domains/{}", encode(&name));
            let domain = client.call(Method::PATCH, &path, Some(json!({ "forward_unknown": target }))).await?;
            client.print(&domain, |d| match d["forward_unknown"].as_str() {
                Some(target) => format!("mail for unknown addresses of {name} now goes to {target}"),
                None => format!("unknown addresses of {name} are no longer forwarded"),
            });
        }
        DomainCommand::List => {
            let domains = client.call(Method::GET, "/domains", None).await?;
            client.print(&domains, |list| {
                let line = |d: &serde_json::Value| {
                    let name = d["name"].as_str().unwrap_or_default();
                    match (d["alias_of"].as_str(), d["catch_all"].as_str()) {
                        (Some(target), _) => format!("{name} (alias of {target})"),
                        (None, Some(catch_all)) => format!("{name} (catch-all {catch_all})"),
                        (None, None) => name.to_owned(),
                    }
                };
                list.as_array().into_iter().flatten().map(line).collect::<Vec<_>>().join("\n")
            });
        }
        DomainCommand::Remove { name } => {
            client.call(Method::DELETE, &format!("/domains/{}", encode(&name)), None).await?;
            client.print(&json!({ "removed": name }), |_| format!("removed domain {name}"));
        }
        DomainCommand::Dkim(command) => dkim(client, command).await?,
    }
    Ok(())
}

/// One DKIM key: selector, algorithm, state, and the record to publish.
fn dkim_lines(key: &serde_json::Value) -> String {
    let state = if key["active"] == true { "active" } else { "inactive" };
    format!(
        "{} ({}, {state})\n  publish: {}",
        key["selector"].as_str().unwrap_or_default(),
        key["algorithm"].as_str().unwrap_or_default(),
        key["zone_line"].as_str().unwrap_or_default()
    )
}

async fn dkim(client: AdminClient, command: DkimCommand) -> anyhow::Result<()> {
    match command {
        DkimCommand::Generate { domain, selector, algorithm, activate } => {
            let body = json!({ "selector": selector, "algorithm": algorithm, "activate": activate });
            let key = client.call(Method::POST, &format!("/domains/{}/dkim", encode(&domain)), Some(body)).await?;
            client.print(&key, |key| {
                let next = if key["active"] == true {
                    "Outgoing mail is signed with it now; publish the record so receivers can check it."
                } else {
                    "Publish the record, wait for the DNS TTL, then run `wmail domain dkim activate`."
                };
                format!("generated DKIM key {}\n{next}", dkim_lines(key))
            });
        }
        DkimCommand::List { domain } => {
            let keys = client.call(Method::GET, &format!("/domains/{}/dkim", encode(&domain)), None).await?;
            client.print(&keys, |keys| {
                let lines: Vec<String> = keys.as_array().into_iter().flatten().map(dkim_lines).collect();
                if lines.is_empty() { format!("{domain} has no DKIM keys") } else { lines.join("\n") }
            });
        }
        DkimCommand::Activate { domain, selector } => {
            let path = format!("/domains/{}/dkim/{}/activate", encode(&domain), encode(&selector));
            client.call(Method::POST, &path, None).await?;
            client.print(&json!({ "active": selector }), |_| format!("{domain} now signs with {selector}"));
        }
        DkimCommand::Remove { domain, selector } => {
            let path = format!("/domains/{}/dkim/{}", encode(&domain), encode(&selector));
            client.call(Method::DELETE, &path, None).await?;
            client.print(&json!({ "removed": selector }), |_| format!("removed DKIM key {selector} of {domain}"));
        }
    }
    Ok(())
}

async fn account(client: AdminClient, command: AccountCommand) -> anyhow::Result<()> {
    match command {
        AccountCommand::Add { address, password_stdin, quota, name } => {
            let (password, generated) = read_password(password_stdin)?;
            let body = new_account_body(&address, &password, name.as_deref(), quota);
            let mut account = client.call(Method::POST, "/accounts", Some(body)).await?;
            if generated {
                account["generated_password"] = json!(password);
            }
            client.print(&account, |a| {
                let mut text = format!("created account {}", a["address"].as_str().unwrap_or_default());
                if generated {
                    text.push_str(&format!("\ngenerated password (shown once): {password}"));
                }
                text
            });
        }
        AccountCommand::List { domain } => {
            let path = match &domain {
                Some(domain) => format!("/accounts?domain={}", encode(domain)),
                None => "/accounts".into(),
            };
            let accounts = client.call(Method::GET, &path, None).await?;
            client.print(&accounts, |list| {
                list.as_array().into_iter().flatten().map(account_line).collect::<Vec<_>>().join("\n")
            });
        }
        AccountCommand::Show { address } => {
            let account = client.call(Method::GET, &format!("/accounts/{}", encode(&address)), None).await?;
            client.print(&account, account_line);
        }
        AccountCommand::Remove { address } => {
            client.call(Method::DELETE, &format!("/accounts/{}", encode(&address)), None).await?;
            client.print(&json!({ "removed": address }), |_| format!("removed account {address}"));
        }
        AccountCommand::Access { address, disable, send_as } => {
            let mut body = serde_json::Map::new();
            if !disable.is_empty() {
                body.insert("disabled_services".into(), json!(list_argument(&disable)));
            }
            if !send_as.is_empty() {
                body.insert("send_as".into(), json!(list_argument(&send_as)));
            }
            if body.is_empty() {
                anyhow::bail!("nothing to change: give --disable and/or --send-as (see --help)");
            }
            let path = format!("/accounts/{}", encode(&address));
            let account = client.call(Method::PATCH, &path, Some(serde_json::Value::Object(body))).await?;
            client.print(&account, |a| {
                format!("{address}: disabled services {}, may also send as {}", a["disabled_services"], a["send_as"])
            });
        }
        AccountCommand::Passwd { address, password_stdin } => {
            let (password, generated) = read_password(password_stdin)?;
            let path = format!("/accounts/{}", encode(&address));
            let mut account = client.call(Method::PATCH, &path, Some(json!({ "password": password }))).await?;
            if generated {
                account["generated_password"] = json!(password);
            }
            client.print(&account, |_| {
                let mut text = format!("changed the password of {address}");
                if generated {
                    text.push_str(&format!("\ngenerated password (shown once): {password}"));
                }
                text
            });
        }
    }
    Ok(())
}

/// A repeatable list option where `none` means the empty list.
fn list_argument(values: &[String]) -> Vec<String> {
    values.iter().filter(|value| !value.eq_ignore_ascii_case("none")).cloned().collect()
}

/// One line per queued message: id, age, attempts, sender, and pending recipients.
fn queue_line(entry: &serde_json::Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let age_minutes = now.saturating_sub(entry["created_ms"].as_u64().unwrap_or(now)) / 60_000;
    let recipients: Vec<String> = entry["recipients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"] == "pending")
        .map(|r| r["address"].as_str().unwrap_or_default().to_owned())
        .collect();
    let sender = entry["return_path"].as_str().filter(|s| !s.is_empty()).unwrap_or("<>");
    format!(
        "{:>8}  {:>6} min  {:>3} attempts  {sender} -> {}",
        entry["id"],
        age_minutes,
        entry["attempts"],
        recipients.join(", ")
    )
}

async fn quarantine(client: AdminClient, command: QuarantineCommand) -> anyhow::Result<()> {
    let account = |address: &str| format!("/accounts/{}", admin::encode(address));
    match command {
        QuarantineCommand::List { address } => {
            let path = match &address {
                Some(address) => format!("{}/quarantine", account(address)),
                None => "/quarantine".to_owned(),
            };
            let entries = client.call(Method::GET, &path, None).await?;
            client.print(&entries, |entries| {
                let rows: Vec<String> = entries
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|entry| {
                        let received = entry["received_ms"].as_i64().and_then(chrono::DateTime::from_timestamp_millis);
                        format!(
                            "#{:<6} {}  account {}  from {}  \"{}\"  ({})",
                            entry["id"],
                            received.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default(),
                            entry["account_id"],
                            entry["from"].as_str().or(entry["sender"].as_str()).unwrap_or_default(),
                            entry["subject"].as_str().unwrap_or_default(),
                            entry["reason"].as_str().unwrap_or_default()
                        )
                    })
                    .collect();
                if rows.is_empty() { "the quarantine is empty".to_owned() } else { rows.join("\n") }
            });
        }
        QuarantineCommand::Release { address, id } => {
            client.call(Method::POST, &format!("{}/quarantine/{id}/release", account(&address)), None).await?;
            client.print(&json!({ "released": id }), |_| format!("delivered #{id} to {address}"));
        }
        QuarantineCommand::Delete { address, id } => {
            client.call(Method::DELETE, &format!("{}/quarantine/{id}", account(&address)), None).await?;
            client.print(&json!({ "deleted": id }), |_| format!("deleted #{id} from the quarantine of {address}"));
        }
        QuarantineCommand::Allow { address, sender } => {
            let body = json!({ "sender": sender });
            client.call(Method::POST, &format!("{}/allowed-senders", account(&address)), Some(body)).await?;
            client.print(&json!({ "allowed": sender }), |_| format!("{address} now always accepts {sender}"));
        }
        QuarantineCommand::Disallow { address, sender } => {
            let path = format!("{}/allowed-senders/{}", account(&address), admin::encode(&sender));
            client.call(Method::DELETE, &path, None).await?;
            client.print(&json!({ "disallowed": sender }), |_| format!("{address} no longer always accepts {sender}"));
        }
        QuarantineCommand::Notify => {
            let report = client.call(Method::POST, "/quarantine/digests", Some(json!({}))).await?;
            client.print(&report, |r| format!("sent {} quarantine digest(s)", r["sent"]));
        }
        QuarantineCommand::Allowed { address } => {
            let senders = client.call(Method::GET, &format!("{}/allowed-senders", account(&address)), None).await?;
            client.print(&senders, |senders| {
                let list: Vec<&str> = senders.as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
                if list.is_empty() { format!("{address} has no allowed senders") } else { list.join("\n") }
            });
        }
    }
    Ok(())
}

async fn security(client: AdminClient, command: SecurityCommand) -> anyhow::Result<()> {
    match command {
        SecurityCommand::Blocks(BlocksCommand::List) => {
            let blocks = client.call(Method::GET, "/security/blocks", None).await?;
            client.print(&blocks, |blocks| {
                let rows: Vec<String> = blocks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|block| {
                        let until = block["until_ms"].as_i64().and_then(chrono::DateTime::from_timestamp_millis);
                        format!(
                            "{:<8} {:<40} until {}  ({})",
                            block["kind"].as_str().unwrap_or_default(),
                            block["key"].as_str().unwrap_or_default(),
                            until.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default(),
                            block["reason"].as_str().unwrap_or_default()
                        )
                    })
                    .collect();
                if rows.is_empty() { "no login blocks".to_owned() } else { rows.join("\n") }
            });
            Ok(())
        }
        SecurityCommand::Blocks(BlocksCommand::Remove { kind, key }) => {
            let path = format!("/security/blocks/{}/{}", admin::encode(&kind), admin::encode(&key));
            client.call(Method::DELETE, &path, None).await?;
            client.print(&json!({ "lifted": { "kind": kind, "key": key } }), |_| {
                format!("lifted the {kind} block of {key}")
            });
            Ok(())
        }
        SecurityCommand::Verdicts { message_id, sender, limit } => {
            let mut query = format!("/security/verdicts?limit={limit}");
            if let Some(id) = &message_id {
                query.push_str(&format!("&message_id={}", admin::encode(id)));
            }
            if let Some(sender) = &sender {
                query.push_str(&format!("&sender={}", admin::encode(sender)));
            }
            let found = client.call(Method::GET, &query, None).await?;
            client.print(&found, |found| {
                let rows: Vec<String> = found["verdicts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|record| {
                        let verdict = &record["verdict"];
                        let time = record["time_ms"].as_i64().and_then(chrono::DateTime::from_timestamp_millis);
                        format!(
                            "{}  {:<8} score {:>5.1}  {} -> {}  <{}>  {}",
                            time.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default(),
                            verdict["action"]["action"].as_str().unwrap_or_default(),
                            verdict["score"].as_f64().unwrap_or(0.0),
                            record["mail_from"].as_str().unwrap_or_default(),
                            record["recipients"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(serde_json::Value::as_str)
                                .collect::<Vec<_>>()
                                .join(","),
                            record["message_id"].as_str().unwrap_or_default(),
                            verdict["checks"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|c| format!(
                                    "{}={}",
                                    c["name"].as_str().unwrap_or_default(),
                                    c["result"].as_str().unwrap_or_default()
                                ))
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    })
                    .collect();
                if rows.is_empty() { "no verdicts match".to_owned() } else { rows.join("\n") }
            });
            Ok(())
        }
    }
}

async fn search(client: AdminClient, command: SearchCommand) -> anyhow::Result<()> {
    match command {
        SearchCommand::Status => {
            let status = client.call(Method::GET, "/search/status", None).await?;
            client.print(&status, |s| {
                format!(
                    "{} documents, {:.1} MB on disk; SEARCH read {} messages since start",
                    s["documents"],
                    s["index_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                    s["messages_read"]
                )
            });
            Ok(())
        }
        SearchCommand::Reindex { account } => {
            let body = json!({ "account": account });
            client.call(Method::POST, "/search/reindex", Some(body)).await?;
            let mut bar = admin::ProgressBar::new("reindexing");
            let progress = loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let progress = client.call(Method::GET, "/search/reindex", None).await?;
                let (done, total) = (progress["done"].as_u64().unwrap_or(0), progress["total"].as_u64().unwrap_or(0));
                bar.show(done, total);
                if progress["running"] != json!(true) {
                    break progress;
                }
            };
            bar.finish();
            let status = client.call(Method::GET, "/search/status", None).await?;
            let seconds = (progress["finished_ms"].as_u64().unwrap_or(0))
                .saturating_sub(progress["started_ms"].as_u64().unwrap_or(0)) as f64
                / 1000.0;
            let done = progress["done"].as_u64().unwrap_or(0);
            client.print(&progress, |_| {
                format!(
                    "reindexed {done} messages in {seconds:.1} s ({:.0}/s); the index holds {} documents, {:.1} MB",
                    done as f64 / seconds.max(0.001),
                    status["documents"],
                    status["index_bytes"].as_f64().unwrap_or(0.0) / 1e6
                )
            });
            Ok(())
        }
    }
}

async fn cluster(client: AdminClient, command: ClusterCommand) -> anyhow::Result<()> {
    let (method, path, done, node) = match command {
        ClusterCommand::Status => {
            let status = client.call(Method::GET, "/cluster/status", None).await?;
            client.print(&status, cluster_table);
            return Ok(());
        }
        ClusterCommand::Token { learner, ttl } => {
            let body = json!({ "learner": learner, "ttl_seconds": ttl });
            let token = client.call(Method::POST, "/cluster/tokens", Some(body)).await?;
            client.print(&token, |t| {
                format!(
                    "{}\n\nOn the new node (empty data directory, [blob] backend = \"s3\" like this one):\n  \
                     wmail serve --config FILE --join <this node's [cluster] advertise> --join-token {}\n\
                     The token works once and expires in {} s; the node joins as a {}.",
                    t["token"].as_str().unwrap_or_default(),
                    t["token"].as_str().unwrap_or_default(),
                    t["expires_in_seconds"],
                    if learner { "learner" } else { "voter (learner once five vote)" }
                )
            });
            return Ok(());
        }
        ClusterCommand::Leave { node } => {
            (Method::DELETE, format!("/cluster/nodes/{node}"), "left the cluster; stop it now", node)
        }
        ClusterCommand::Promote { node } => {
            (Method::POST, format!("/cluster/nodes/{node}/promote"), "is a voter now", node)
        }
        ClusterCommand::Demote { node } => {
            (Method::POST, format!("/cluster/nodes/{node}/demote"), "is a learner now", node)
        }
    };
    client.call(method, &path, None).await?;
    client.print(&json!({ "node": node, "done": done }), |_| format!("node {node} {done}"));
    Ok(())
}

/// `wmail cluster status` as a table: one line per member.
fn cluster_table(status: &serde_json::Value) -> String {
    let mut lines = vec![format!(
        "node {} answering: {} in term {}, leader {}, ready: {}",
        status["node_id"],
        status["state"].as_str().unwrap_or_default(),
        status["term"],
        status["leader"],
        status["ready"]
    )];
    lines.push(format!(
        "{:>4}  {:<22} {:<8} {:<9} {:>9} {:>9} {:>9} {:>6}  {}",
        "NODE", "ADDRESS", "ROLE", "STATE", "TERM", "COMMIT", "APPLIED", "LAG", "VERSION"
    ));
    for member in status["members"].as_array().into_iter().flatten() {
        let s = &member["status"];
        let text = |v: &serde_json::Value| if v.is_null() { "-".to_string() } else { v.to_string() };
        let state = s["state"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("DOWN ({})", member["error"].as_str().unwrap_or("no answer")));
        lines.push(format!(
            "{:>4}  {:<22} {:<8} {:<9} {:>9} {:>9} {:>9} {:>6}  {}",
            member["id"].as_u64().unwrap_or_default(),
            member["addr"].as_str().unwrap_or_default(),
            member["role"].as_str().unwrap_or_default(),
            state,
            text(&s["term"]),
            text(&s["committed_index"]),
            text(&s["applied_index"]),
            text(&member["lag"]),
            match (s["version"].as_str(), s["command_version"].as_u64()) {
                (Some(release), Some(commands)) => format!("{release} (commands v{commands})"),
                (release, _) => release.unwrap_or("-").to_string(),
            }
        ));
    }
    lines.join("\n")
}

async fn queue(client: AdminClient, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::List { limit } => {
            let page = client.call(Method::GET, &format!("/queue?limit={limit}"), None).await?;
            client.print(&page, |page| {
                let mut lines: Vec<String> = page["entries"].as_array().into_iter().flatten().map(queue_line).collect();
                lines.push(format!("{} message(s) queued", page["total"]));
                lines.join("\n")
            });
        }
        QueueCommand::Show { id } => {
            let entry = client.call(Method::GET, &format!("/queue/{id}"), None).await?;
            client.print(&entry, |entry| {
                let mut lines = vec![queue_line(entry)];
                for r in entry["recipients"].as_array().into_iter().flatten() {
                    lines.push(format!(
                        "  {} {}: {}",
                        r["status"].as_str().unwrap_or_default(),
                        r["address"].as_str().unwrap_or_default(),
                        r["reply"].as_str().unwrap_or("(not tried yet)")
                    ));
                }
                if let Some(node) = entry["leased_to"].as_str() {
                    lines.push(format!("  being delivered by {node}"));
                }
                lines.join("\n")
            });
        }
        QueueCommand::Retry { id } => {
            client.call(Method::POST, &format!("/queue/{id}/retry"), None).await?;
            client.print(&json!({ "retrying": id }), |_| format!("queue entry {id} will be retried now"));
        }
        QueueCommand::Flush => {
            let flushed = client.call(Method::POST, "/queue/flush", None).await?;
            client.print(&flushed, |f| format!("retrying {} queued message(s) now", f["retrying"]));
        }
        QueueCommand::Remove { id } => {
            client.call(Method::DELETE, &format!("/queue/{id}"), None).await?;
            client.print(&json!({ "removed": id }), |_| format!("removed queue entry {id}"));
        }
    }
    Ok(())
}

async fn alias(client: AdminClient, command: AliasCommand) -> anyhow::Result<()> {
    match command {
        AliasCommand::Add { alias, targets } => {
            let body = json!({ "alias": alias, "targets": targets });
            let created = client.call(Method::POST, "/aliases", Some(body)).await?;
            client.print(&created, |a| {
                format!("added alias {} -> {}", a["alias"].as_str().unwrap_or_default(), targets.join(", "))
            });
        }
        AliasCommand::Remove { alias } => {
            client.call(Method::DELETE, &format!("/aliases/{}", encode(&alias)), None).await?;
            client.print(&json!({ "removed": alias }), |_| format!("removed alias {alias}"));
        }
        AliasCommand::List { domain } => {
            let path = match &domain {
                Some(domain) => format!("/aliases?domain={}", encode(domain)),
                None => "/aliases".into(),
            };
            let aliases = client.call(Method::GET, &path, None).await?;
            client.print(&aliases, |list| {
                list.as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let targets: Vec<&str> =
                            a["targets"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
                        format!("{} -> {}", a["alias"].as_str().unwrap_or_default(), targets.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

//! `mailwit tenant ...`: one admin API request per command.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use hyper::Method;
use mailwit::config::Config;
use serde_json::json;

use crate::{admin_call, print_json, print_table, text, time_text};

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Deploy a new version of a function (a .wasm component, or
    /// `builtin:<name>` for one embedded in mailwit); it is validated first
    /// and used from the next transaction on.
    Deploy {
        tenant: String,
        function: String,
        component: PathBuf,
        /// Run it as a shadow beside the live version instead: compared on
        /// a share of the transactions, it changes no reply, route or
        /// header (`tenant shadow` shows what it would have changed).
        #[arg(long)]
        shadow: bool,
    },
    /// Run a candidate (a path or `builtin:<name>`) against the tenant's
    /// recorded transactions (or the `.eml` files of a directory) next to
    /// the live version; prints every difference and exits 1 when there is
    /// any.
    Test {
        tenant: String,
        function: String,
        component: PathBuf,
        /// A directory of `.eml` files: each is a transaction whose sender
        /// is its From and recipients its To, Cc and Bcc.
        #[arg(long)]
        eml: Option<PathBuf>,
    },
    /// A tenant's shadow: its report (differences by kind, samples,
    /// failures), or `promote` it (an ordinary deploy) or `drop` it.
    Shadow {
        tenant: String,
        /// The function in shadow (checked against the shadow's).
        function: String,
        #[arg(value_enum)]
        action: Option<ShadowAction>,
    },
    /// Replace a tenant's rules (a TOML file).
    Rules { tenant: String, rules: PathBuf },
    /// Tenants, their functions and active versions.
    List {
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Go back to the previous version of a function (`rules` for the rules).
    Rollback { tenant: String, function: String },
    /// Create a tenant (empty: no functions, no rules, no users).
    Create { tenant: String },
    /// A tenant's versions, status, users, API keys and limits.
    Show {
        tenant: String,
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Refuse a tenant's logins (`535 5.7.8`) and hold its queued mail.
    Suspend {
        tenant: String,
        /// Why (logged with each refused login).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Undo `suspend`: logins work again, held mail goes out.
    Resume { tenant: String },
    /// Delete a tenant: its versions, rules, users, keys, status events and
    /// sandbox.
    Delete {
        tenant: String,
        /// Required: deleting cannot be undone.
        #[arg(long)]
        confirm: bool,
    },
    /// A tenant's SMTP users.
    #[command(subcommand)]
    User(UserCommand),
    /// A tenant's API keys (login `App`, the key as the password).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Admin API tokens scoped to one tenant (the operator's token only).
    #[command(subcommand)]
    Token(TokenCommand),
    /// What a tenant may send, and what it used on this host.
    #[command(subcommand)]
    Limits(LimitsCommand),
}

#[derive(Subcommand)]
pub enum LimitsCommand {
    /// The limits and this host's counters.
    Show { tenant: String },
    /// Replace the limits (the operator's token): a limit not given is no
    /// limit.
    Set {
        tenant: String,
        #[command(flatten)]
        limits: mailwit::usage::TenantLimits,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a token that reaches only this tenant; printed once.
    Issue {
        tenant: String,
        /// Days until it expires.
        #[arg(long, default_value_t = 90)]
        days: u64,
    },
    /// Tokens: ids, tenants, creation and expiry (never a secret).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: its next request gets 401.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user. Without `--password-stdin` the server makes a password
    /// and prints it (once).
    Add {
        tenant: String,
        login: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password (made by the server without `--password-stdin`).
    Passwd {
        tenant: String,
        login: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user: its next login fails.
    Remove { tenant: String, login: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ShadowAction {
    /// Make the candidate live (a new version, as `deploy`) and end the shadow.
    Promote,
    /// End the shadow; the live version stays.
    Drop,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key; it is printed once, as `<id>.<secret>`.
    Create {
        tenant: String,
        /// The key's id (made by the server when omitted).
        #[arg(long)]
        id: Option<String>,
    },
    /// Key ids and creation times.
    List {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: its next login fails.
    Revoke { tenant: String, id: String },
}

pub fn run(config: Config, command: TenantCommand) -> anyhow::Result<()> {
    let (method, path, body) = match command {
        TenantCommand::Deploy {
            tenant,
            function,
            component,
            shadow,
        } => (
            Method::PUT,
            format!(
                "/v1/tenants/{tenant}/functions/{function}{}",
                if shadow { "?shadow=true" } else { "" }
            ),
            mailwit::tenants::component_bytes(&component)?,
        ),
        TenantCommand::Test {
            tenant,
            function,
            component,
            eml,
        } => return test(&config, &tenant, &function, &component, eml.as_deref()),
        TenantCommand::Shadow {
            tenant,
            function,
            action,
        } => {
            let report = admin_call(
                &config,
                Method::GET,
                &format!("/v1/tenants/{tenant}/shadow"),
                Vec::new(),
            )?;
            anyhow::ensure!(
                report["function"] == function.as_str(),
                "tenant {tenant}'s shadow is of {}, not {function}",
                report["function"]
            );
            match action {
                None => return print_json(&report),
                Some(ShadowAction::Promote) => (
                    Method::POST,
                    format!("/v1/tenants/{tenant}/shadow/promote"),
                    Vec::new(),
                ),
                Some(ShadowAction::Drop) => (
                    Method::DELETE,
                    format!("/v1/tenants/{tenant}/shadow"),
                    Vec::new(),
                ),
            }
        }
        TenantCommand::Rules { tenant, rules } => (
            Method::PUT,
            format!("/v1/tenants/{tenant}/rules"),
            std::fs::read(&rules).with_context(|| format!("reading {}", rules.display()))?,
        ),
        TenantCommand::List { json } => {
            let answer = admin_call(&config, Method::GET, "/v1/tenants", Vec::new())?;
            if json {
                return print_json(&answer);
            }
            let mut rows = Vec::new();
            for t in answer.as_array().map(Vec::as_slice).unwrap_or_default() {
                let functions: Vec<String> = t["functions"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| format!("{}@{}", text(&f["name"]), f["version"]))
                    .collect();
                rows.push(vec![
                    text(&t["tenant"]),
                    t["rules_version"].to_string(),
                    t["generation"].to_string(),
                    functions.join(" "),
                ]);
            }
            print_table(&["TENANT", "RULES", "GENERATION", "FUNCTIONS"], rows);
            return Ok(());
        }
        TenantCommand::Rollback { tenant, function } => (
            Method::POST,
            format!("/v1/tenants/{tenant}/functions/{function}/rollback"),
            Vec::new(),
        ),
        TenantCommand::Create { tenant } => (
            Method::POST,
            "/v1/tenants".to_string(),
            serde_json::to_vec(&json!({ "id": tenant }))?,
        ),
        TenantCommand::Show { tenant, json } => {
            let answer = admin_call(
                &config,
                Method::GET,
                &format!("/v1/tenants/{tenant}"),
                Vec::new(),
            )?;
            return match json {
                true => print_json(&answer),
                false => show(&answer),
            };
        }
        TenantCommand::Suspend { tenant, reason } => (
            Method::POST,
            format!("/v1/tenants/{tenant}/suspend"),
            serde_json::to_vec(&json!({ "reason": reason }))?,
        ),
        TenantCommand::Resume { tenant } => (
            Method::POST,
            format!("/v1/tenants/{tenant}/resume"),
            Vec::new(),
        ),
        TenantCommand::Delete { tenant, confirm } => {
            anyhow::ensure!(
                confirm,
                "deleting tenant {tenant} removes its versions, rules, users, keys, status and sandbox: add --confirm"
            );
            (
                Method::DELETE,
                format!("/v1/tenants/{tenant}?confirm={tenant}"),
                Vec::new(),
            )
        }
        TenantCommand::User(UserCommand::Add {
            tenant,
            login,
            password_stdin,
        }) => (
            Method::POST,
            format!("/v1/tenants/{tenant}/users"),
            serde_json::to_vec(
                &json!({ "login": login, "password": stdin_password(password_stdin)? }),
            )?,
        ),
        TenantCommand::User(UserCommand::Passwd {
            tenant,
            login,
            password_stdin,
        }) => (
            Method::PUT,
            format!("/v1/tenants/{tenant}/users/{}/password", escaped(&login)),
            serde_json::to_vec(&json!({ "password": stdin_password(password_stdin)? }))?,
        ),
        TenantCommand::User(UserCommand::Remove { tenant, login }) => (
            Method::DELETE,
            format!("/v1/tenants/{tenant}/users/{}", escaped(&login)),
            Vec::new(),
        ),
        TenantCommand::Key(KeyCommand::Create { tenant, id }) => (
            Method::POST,
            format!("/v1/tenants/{tenant}/api-keys"),
            serde_json::to_vec(&json!({ "id": id }))?,
        ),
        TenantCommand::Key(KeyCommand::List { tenant, json }) => {
            let answer = admin_call(
                &config,
                Method::GET,
                &format!("/v1/tenants/{tenant}/api-keys"),
                Vec::new(),
            )?;
            if json {
                return print_json(&answer);
            }
            let rows = answer["api_keys"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|k| vec![text(&k["id"]), time_text(k["created_ms"].as_u64())])
                .collect();
            print_table(&["ID", "CREATED (UTC)"], rows);
            return Ok(());
        }
        TenantCommand::Token(TokenCommand::Issue { tenant, days }) => (
            Method::POST,
            "/v1/tokens".to_string(),
            serde_json::to_vec(
                &json!({ "tenant": tenant, "ttl_secs": days.saturating_mul(86_400) }),
            )?,
        ),
        TenantCommand::Token(TokenCommand::List { tenant, json }) => {
            let path = match tenant {
                Some(t) => format!("/v1/tokens?tenant={t}"),
                None => "/v1/tokens".to_string(),
            };
            let answer = admin_call(&config, Method::GET, &path, Vec::new())?;
            if json {
                return print_json(&answer);
            }
            let rows = answer["tokens"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    vec![
                        text(&t["id"]),
                        text(&t["tenant"]),
                        time_text(t["created_ms"].as_u64()),
                        time_text(t["expires_ms"].as_u64()),
                    ]
                })
                .collect();
            print_table(&["ID", "TENANT", "CREATED (UTC)", "EXPIRES (UTC)"], rows);
            return Ok(());
        }
        TenantCommand::Limits(LimitsCommand::Show { tenant }) => (
            Method::GET,
            format!("/v1/tenants/{tenant}/limits"),
            Vec::new(),
        ),
        TenantCommand::Limits(LimitsCommand::Set { tenant, limits }) => (
            Method::PUT,
            format!("/v1/tenants/{tenant}/limits"),
            serde_json::to_vec(&limits)?,
        ),
        TenantCommand::Token(TokenCommand::Revoke { id }) => {
            (Method::DELETE, format!("/v1/tokens/{id}"), Vec::new())
        }
        TenantCommand::Key(KeyCommand::Revoke { tenant, id }) => (
            Method::DELETE,
            format!("/v1/tenants/{tenant}/api-keys/{id}"),
            Vec::new(),
        ),
    };
    print_json(&admin_call(&config, method, &path, body)?)
}

/// `mailwit tenant test`: the report, and an error (exit 1) when the
/// candidate differs from the live version anywhere.
fn test(
    config: &Config,
    tenant: &str,
    function: &str,
    component: &std::path::Path,
    eml: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let wasm = mailwit::tenants::component_bytes(component)?;
    let mut body = json!({ "component": b64.encode(wasm) });
    if let Some(dir) = eml {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        anyhow::ensure!(!files.is_empty(), "no .eml files in {}", dir.display());
        let mut messages = Vec::new();
        for f in files {
            let content = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            messages.push(json!({ "name": name, "content": b64.encode(content) }));
        }
        body["messages"] = messages.into();
    }
    let report = admin_call(
        config,
        Method::POST,
        &format!("/v1/tenants/{tenant}/functions/{function}/test"),
        serde_json::to_vec(&body)?,
    )?;
    print_json(&report)?;
    let differences = report["differences"].as_array().map_or(0, Vec::len);
    if report["cases"] == 0 {
        eprintln!(
            "nothing to compare: no {}",
            report["source"].as_str().unwrap_or("cases")
        );
    }
    anyhow::ensure!(
        differences == 0,
        "{differences} difference(s) between the candidate and the live {function}"
    );
    Ok(())
}

/// The password on stdin's first line, when asked to read it (a password
/// on the command line would be visible to every user of the machine).
fn stdin_password(read: bool) -> anyhow::Result<Option<String>> {
    if !read {
        return Ok(None);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

/// A login as one path segment.
fn escaped(login: &str) -> String {
    login
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `mailwit tenant show` for a person.
fn show(t: &serde_json::Value) -> anyhow::Result<()> {
    let status = match &t["suspended"] {
        serde_json::Value::Null => "active".to_string(),
        s => format!(
            "suspended since {} ({})",
            time_text(s["since_ms"].as_u64()),
            text(&s["reason"])
        ),
    };
    println!("tenant {}: {status}", text(&t["tenant"]));
    println!("created: {}", time_text(t["created_ms"].as_u64()));
    println!(
        "rules: version {}, generation {}",
        t["rules_version"], t["generation"]
    );
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let functions: Vec<String> = list(&t["functions"])
        .iter()
        .map(|f| format!("{}@{}", text(&f["name"]), f["version"]))
        .collect();
    println!("functions: {}", functions.join(" "));
    println!(
        "users ({} of at most {}):",
        list(&t["users"]).len(),
        t["max_users"]
    );
    print_table(
        &["LOGIN", "FROM", "CREATED (UTC)"],
        list(&t["users"])
            .iter()
            .map(|u| {
                vec![
                    text(&u["login"]),
                    text(&u["from"]),
                    time_text(u["created_ms"].as_u64()),
                ]
            })
            .collect(),
    );
    println!("API keys:");
    print_table(
        &["ID", "CREATED (UTC)"],
        list(&t["api_keys"])
            .iter()
            .map(|k| vec![text(&k["id"]), time_text(k["created_ms"].as_u64())])
            .collect(),
    );
    if !t["limits"].is_null() {
        println!("limits: {}", t["limits"]);
    }
    Ok(())
}

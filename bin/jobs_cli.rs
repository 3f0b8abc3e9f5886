//! `layerline jobs …` and `layerline prune …`: the jobs API from the command line, over HTTP
//! like any client.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Base URL of a running `layerline serve` (before or after the subcommand).
    #[arg(
        long,
        env = "LAYERLINE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API token (needs jobs-view; images-manage to cancel), before or after the subcommand.
    #[arg(long, env = "LAYERLINE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// List jobs, newest first: id, kind, state, progress, caption.
    List {
        /// Only these states, comma-separated (queued, scheduled, running, completed, error,
        /// cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only these kinds, comma-separated (delete_image, delete_namespace, …).
        #[arg(long)]
        kind: Option<String>,
        /// Jobs shown (1–100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Print one job as JSON.
    Show { id: String },
    /// Follow a job with a progress bar until it ends; exits non-zero unless it completed.
    Watch { id: String },
    /// Ask a job to stop (at its next step boundary when running).
    Cancel { id: String },
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Base URL of a running `layerline serve`.
    #[arg(long, env = "LAYERLINE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API token (needs images-manage, and jobs-view to follow the run).
    #[arg(long, env = "LAYERLINE_TOKEN", hide_env_values = true)]
    token: String,
    /// The stored policy to run (its current version).
    #[arg(long)]
    policy: String,
    /// Only plan: store and print what the run would delete, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Plan items printed when the run ends (0: only the summary).
    #[arg(long, default_value_t = 20)]
    show: u32,
}

/// Starts a run of a stored policy, follows it to its end and prints its plan.
pub async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.url, args.token);
    let body = json!({
        "action": "prune",
        "contents": {"policy_id": args.policy, "dry_run": args.dry_run},
    });
    let descriptor = api
        .call(reqwest::Method::POST, "/v1/images/tasks", &[], Some(body))
        .await?;
    let id = descriptor["job"]["id"]
        .as_str()
        .context("the service answered without a job id")?
        .to_owned();
    eprintln!("started job {id}");
    let outcome = watch(&api, &id).await;
    // The plan is stored even when the run stopped at its guard: show it either way.
    if args.show > 0 {
        let query = [("page[size]", args.show.min(1000).to_string())];
        let path = format!("/v1/jobs/{id}/plan");
        if let Ok(plan) = api.call(reqwest::Method::GET, &path, &query, None).await {
            println!(
                "plan at log position {}: {} tag(s), {} manifest(s), {} bytes",
                plan["position"], plan["tags"], plan["manifests"], plan["bytes"]
            );
            for item in plan["items"].as_array().into_iter().flatten() {
                let what = match item["kind"].as_str() {
                    Some("tag") => format!("tag {}", item["tag"].as_str().unwrap_or_default()),
                    _ => format!("manifest {}", item["digest"].as_str().unwrap_or_default()),
                };
                println!(
                    "  {}: {what} ({}, {} bytes)",
                    item["image_name"].as_str().unwrap_or_default(),
                    item["reason"].as_str().unwrap_or_default(),
                    item["bytes"]
                );
            }
        }
    }
    outcome
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// What to import: `[http(s)://]host[:port]/repository[:tag]`. Without a scheme, https
    /// is used except for loopback hosts (as Docker does). Without a tag, every tag.
    reference: String,
    /// The namespace (by name) to import into.
    #[arg(long)]
    namespace: String,
    /// The image's name in the namespace. [default: the repository path]
    #[arg(long)]
    image: Option<String>,
    /// The namespace's region.
    #[arg(long, default_value = "fr-par")]
    region: String,
    /// The credential set to reach the source registry with: one the workers have configured
    /// for that registry's host as LAYERLINE_REGISTRY_<SET>_HOST, _USERNAME and _PASSWORD.
    #[arg(long, value_name = "SET")]
    credentials: Option<String>,
    /// Base URL of a running `layerline serve`.
    #[arg(long, env = "LAYERLINE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API token (needs images-import and images-view, and jobs-view to follow the job).
    #[arg(long, env = "LAYERLINE_TOKEN", hide_env_values = true)]
    token: String,
}

/// A reference split into registry URL, repository and tag.
fn split_reference(reference: &str) -> anyhow::Result<(String, String, Option<String>)> {
    let (scheme, rest) = match reference.split_once("://") {
        Some((s, rest)) if s == "http" || s == "https" => (Some(s), rest),
        Some((s, _)) => bail!("unsupported scheme {s}:// (http or https)"),
        None => (None, reference),
    };
    let (host, path) = rest
        .split_once('/')
        .with_context(|| format!("{reference}: expected host/repository[:tag]"))?;
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback = matches!(name, "localhost" | "127.0.0.1" | "[::1]");
    let scheme = scheme.unwrap_or(if loopback { "http" } else { "https" });
    // A tag follows the last ':' after the last '/'.
    let (repository, tag) = match path.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_owned())),
        _ => (path, None),
    };
    if repository.is_empty() {
        bail!("{reference}: no repository");
    }
    Ok((format!("{scheme}://{host}"), repository.to_owned(), tag))
}

/// Imports a repository (or one tag of it) into an image of a namespace, creating the image
/// when the namespace has none of that name, and follows the job to its end.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.url, args.token.clone());
    let (registry, repository, tag) = split_reference(&args.reference)?;
    let image_name = args.image.clone().unwrap_or_else(|| repository.clone());
    let base = format!("/registry/v1/regions/{}", args.region);
    let namespaces = api
        .raw(
            reqwest::Method::GET,
            &format!("{base}/namespaces"),
            &[("name", args.namespace.clone())],
        )
        .await?;
    let namespace_id = namespaces["namespaces"][0]["id"]
        .as_str()
        .with_context(|| format!("no namespace named {} in {}", args.namespace, args.region))?
        .to_owned();
    let mut source = json!({"registry": registry, "repository": repository});
    if let Some(tag) = tag {
        source["tags"] = json!([tag]);
    }
    if let Some(set) = &args.credentials {
        source["credentials"] = json!({ "set": set });
    }
    let images = api
        .raw(
            reqwest::Method::GET,
            &format!("{base}/images"),
            &[
                ("namespace_id", namespace_id.clone()),
                ("name", image_name.clone()),
            ],
        )
        .await?;
    let job_id = match images["images"][0]["id"].as_str() {
        Some(image_id) => {
            let body = json!({"action": "import", "contents": {"source": source}});
            let path = format!("/v1/images/{image_id}/tasks");
            let job = api
                .call(reqwest::Method::POST, &path, &[], Some(body))
                .await?;
            eprintln!("importing into image {image_name} ({image_id})");
            job["job"]["id"].as_str().context("no job id")?.to_owned()
        }
        None => {
            let body = json!({"name": image_name, "namespace_id": namespace_id, "source": source});
            let image = api
                .call(reqwest::Method::POST, "/v1/images", &[], Some(body))
                .await?;
            eprintln!(
                "created image {image_name} ({})",
                image["id"].as_str().unwrap_or_default()
            );
            image["import_job_id"]
                .as_str()
                .context("no job id")?
                .to_owned()
        }
    };
    eprintln!("started job {job_id}");
    watch(&api, &job_id).await
}

pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    // Optional to clap only because an argument global to the subcommands cannot be required.
    let token = args
        .token
        .context("the API needs a token: --token or LAYERLINE_TOKEN")?;
    let api = Api::new(&args.url, token);
    match args.command {
        JobsCommand::List { state, kind, limit } => {
            let mut query = vec![("page[size]", limit.to_string())];
            query.extend(state.map(|s| ("filter[state]", s)));
            query.extend(kind.map(|k| ("filter[kind]", k)));
            let jobs = api
                .call(reqwest::Method::GET, "/v1/jobs", &query, None)
                .await?;
            for j in jobs.as_array().into_iter().flatten() {
                println!(
                    "{}  {:<16} {:<10} {:>6}/{:<6} {}",
                    j["id"].as_str().unwrap_or_default(),
                    j["queue"].as_str().unwrap_or_default(),
                    j["state"]["current"].as_str().unwrap_or_default(),
                    j["progress"]["done"],
                    j["progress"]["total"],
                    j["caption"].as_str().unwrap_or_default(),
                );
            }
        }
        JobsCommand::Show { id } => {
            let job = api.job(&id).await?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobsCommand::Watch { id } => watch(&api, &id).await?,
        JobsCommand::Cancel { id } => {
            let path = format!("/v1/jobs/{id}/tasks");
            let body = json!({"action": "cancel"});
            let job = api
                .call(reqwest::Method::POST, &path, &[], Some(body))
                .await?;
            println!(
                "{id}: {}",
                job["state"]["current"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(url: &str, token: String) -> Self {
        Api {
            client: reqwest::Client::new(),
            base: url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// Sends a request and returns its `data`, or the API's error detail as the error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .client
            .request(method, &url)
            .bearer_auth(&self.token)
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("reaching {url}"))?;
        let status = res.status();
        let mut body: Value = res
            .json()
            .await
            .with_context(|| format!("{url} answered {status} without JSON"))?;
        if !status.is_success() {
            let detail = body["error"]["detail"].as_str().unwrap_or("no detail");
            bail!("{url} answered {status}: {detail}");
        }
        Ok(body["data"].take())
    }

    /// A request to a surface that answers without `{"data": …}` (Scaleway's).
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let res = self
            .client
            .request(method, &url)
            .header("x-auth-token", &self.token)
            .query(query)
            .send()
            .await
            .with_context(|| format!("reaching {url}"))?;
        let status = res.status();
        let body: Value = res
            .json()
            .await
            .with_context(|| format!("{url} answered {status} without JSON"))?;
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no detail");
            bail!("{url} answered {status}: {message}");
        }
        Ok(body)
    }

    async fn job(&self, id: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), &[], None)
            .await
    }
}

async fn watch(api: &Api, id: &str) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    loop {
        let job = api.job(id).await?;
        let state = job["state"]["current"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        bar.set_length(job["progress"]["total"].as_u64().unwrap_or(0));
        bar.set_position(job["progress"]["done"].as_u64().unwrap_or(0));
        let step = job["progress"]["step"].as_str().unwrap_or_default();
        bar.set_message(format!("{state} (attempt {}) {step}", job["attempts"]));
        if matches!(state.as_str(), "completed" | "error" | "cancelled") {
            bar.finish();
            println!("{id}: {state}");
            if !job["output"].is_null() {
                println!("{}", job["output"]);
            }
            return match state.as_str() {
                "completed" => Ok(()),
                _ => bail!(
                    "job {id} ended {state}: {}",
                    job["last_error"].as_str().unwrap_or("cancelled")
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references_default_to_https_except_for_loopback_hosts() {
        let split = |r: &str| split_reference(r).unwrap();
        assert_eq!(
            split("127.0.0.1:5000/team/app:v1"),
            (
                "http://127.0.0.1:5000".into(),
                "team/app".into(),
                Some("v1".into())
            )
        );
        assert_eq!(
            split("registry.example.com/team/app"),
            (
                "https://registry.example.com".into(),
                "team/app".into(),
                None
            )
        );
        assert_eq!(
            split("http://registry.internal:5000/app:latest"),
            (
                "http://registry.internal:5000".into(),
                "app".into(),
                Some("latest".into())
            )
        );
        assert_eq!(
            split("localhost:5000/a/b"),
            ("http://localhost:5000".into(), "a/b".into(), None)
        );
        assert!(split_reference("ftp://x/a").is_err());
        assert!(split_reference("just-a-name").is_err());
    }
}

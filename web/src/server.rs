//! The HTTP server: routes, the login, and who may see what ([`crate::auth`]).

use crate::auth::{
    Claim, Credentials, MAX_PASSWORD_BYTES, PasswordChecks, Sessions, Tenant, Who, same,
};
use crate::model::{Detail, Snapshot};
use crate::pages;
use crate::tenants::{RECHECK_SECONDS, Refused, Tenants};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use backstop_backupjob::ops;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How `serve` runs.
#[derive(Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub state: PathBuf,
    pub credentials: Credentials,
    /// What the actions' operations need: the remotes tree and oned's DATASTORE_LOCATION.
    pub remotes: PathBuf,
    pub datastore_location: String,
}

struct App {
    state: PathBuf,
    credentials: Credentials,
    sessions: Sessions,
    checks: PasswordChecks,
    remotes: PathBuf,
    datastore_location: String,
    /// oned, for OpenNebula users' logins (`BACKSTOP_WEB_TENANTS=yes`).
    tenants: Option<Arc<Tenants>>,
}

impl App {
    /// The installation the actions play oned for.
    fn env(&self) -> backstop_backupjob::runner::Env {
        backstop_backupjob::runner::Env {
            remotes: self.remotes.clone(),
            datastore_location: self.datastore_location.clone(),
        }
    }
}

const SESSION_COOKIE: &str = "backstop_session";
const LOGIN_COOKIE: &str = "backstop_login";

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Checks the address against the credentials, binds, and serves until SIGTERM or SIGINT.
pub fn serve(options: Options) -> Result<(), crate::Error> {
    if !options.listen.ip().is_loopback() && !options.credentials.complete() {
        return Err(crate::Error::Serve(format!(
            "refusing to listen on {}, which is not a loopback address, without both BACKSTOP_API_TOKEN and BACKSTOP_WEB_PASSWORD_HASH",
            options.listen
        )));
    }
    let tenants = if options.credentials.tenants {
        let t = crate::tenants::from_env()?;
        eprintln!(
            "backstop serve: OpenNebula users log in through oned at {}",
            t.endpoint()
        );
        Some(Arc::new(t))
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Serve(format!("cannot start: {e}")))?;
    let app = Arc::new(App {
        state: options.state,
        credentials: options.credentials,
        sessions: Sessions::default(),
        checks: PasswordChecks::default(),
        remotes: options.remotes,
        datastore_location: options.datastore_location,
        tenants,
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| {
                crate::Error::Serve(format!("cannot listen on {}: {e}", options.listen))
            })?;
        // The bound address, so that port 0 (any free port) says which one it got.
        let bound = listener.local_addr().unwrap_or(options.listen);
        eprintln!("backstop serve: listening on http://{bound}");
        axum::serve(listener, router(app))
            .with_graceful_shutdown(stopped())
            .await
            .map_err(|e| crate::Error::Serve(format!("the server stopped: {e}")))
    })
}

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Without a page password, only requests addressed to a loopback name are answered: a web
/// page elsewhere that points its own host name at 127.0.0.1 (DNS rebinding) reads nothing.
/// An API token alone does not lift this: the pages need none.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn host_guard(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if app.credentials.password_hash.is_none() && !loopback_host(request.headers()) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "without a page password, backstop serve answers requests for a loopback address only",
        );
    }
    next.run(request).await
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/runs", get(runs))
        .route(
            "/jobs",
            get(|s, q, h| list(s, q, h, ("Backup jobs", Listing::Jobs))),
        )
        .route("/vms", get(|s, q, h| list(s, q, h, ("VMs", Listing::Vms))))
        .route(
            "/datastores",
            get(|s, q, h| list(s, q, h, ("Datastores", Listing::Datastores))),
        )
        .route(
            "/sync-jobs",
            get(|s, q, h| list(s, q, h, ("Sync jobs", Listing::Copies("sync")))),
        )
        .route(
            "/verify-jobs",
            get(|s, q, h| list(s, q, h, ("Verify jobs", Listing::Copies("verify")))),
        )
        .route("/jobs/{id}", get(job))
        .route("/vms/{id}", get(vm))
        .route("/datastores/{id}", get(datastore))
        .route(
            "/api/status",
            get(|s, h| api(s, h, (Detail::Summary, Snapshot::status))),
        )
        .route(
            "/api/jobs",
            get(|s, h| api(s, h, (Detail::Summary, Snapshot::jobs_json))),
        )
        .route(
            "/api/vms",
            get(|s, h| api(s, h, (Detail::Summary, Snapshot::vms_json))),
        )
        .route(
            "/api/images",
            get(|s, h| api(s, h, (Detail::All, Snapshot::images_json))),
        )
        .route(
            "/api/runs",
            get(|s, h| api(s, h, (Detail::Summary, Snapshot::runs_json))),
        )
        .route("/metrics", get(metrics))
        .route("/api/jobs/{id}/{action}", post(action))
        .route(
            "/jobs/{id}/retention",
            get(confirm_retention).post(confirm_retention_post),
        )
        .route("/jobs/{id}/{action}", post(page_action))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .fallback(fallback)
        // The largest form is the login's (a CSRF token and a password of at most
        // MAX_PASSWORD_BYTES); nothing else takes a body.
        .layer(DefaultBodyLimit::max(16 << 10))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            host_guard,
        ))
        .with_state(app)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{body}\n"),
    )
        .into_response()
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A page's answer when the state cannot be read: the reason as a page, with its status.
fn page_error(r: Response, logout: Option<&str>) -> Response {
    let status = r.status();
    let reason = r.extensions().get::<Reason>().map(|r| r.0.clone());
    match reason {
        Some(reason) => {
            let mut page = html(pages::page(
                "The state cannot be read",
                &pages::no_state(&reason),
                logout,
                None,
            ));
            *page.status_mut() = status;
            page
        }
        None => r,
    }
}

/// Why the state could not be read, carried on the plain answer for pages to show.
#[derive(Clone)]
struct Reason(String);

/// 404 as a page: what is not there, and the way back.
fn not_found_page(logout: Option<&str>) -> Response {
    let mut page = html(pages::page(
        "Not found",
        "<p>There is nothing at this address: the job, VM or datastore may have been deleted, \
         or the address mistyped.</p><p><a href=\"/\">Back to the overview</a></p>",
        logout,
        None,
    ));
    *page.status_mut() = StatusCode::NOT_FOUND;
    page
}

/// Any address no route takes: 404, never a redirect to the login (a browser's own request
/// for /favicon.ico would fetch a new login form and void the one on screen).
async fn fallback(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let logout = page_viewer(&app, &headers).await.ok().and_then(|v| v.csrf);
    not_found_page(logout.as_deref())
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// Whether the request carries the API token as a bearer token.
fn bearer_ok(app: &App, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| app.credentials.token_ok(t))
}

/// Who is looking, as a page or the API sees it.
struct Viewer {
    /// The session's CSRF token (the logout's and the forms'); `None` when nobody logged in.
    csrf: Option<String>,
    /// Whether the viewer may see snapshot ids ([`Snapshot::without_ids`]): a session, or the
    /// API token as a bearer token; not whoever reaches pages served without a password.
    ids: bool,
    /// An OpenNebula user: their name and the VMs oned lets them see ([`Snapshot::for_tenant`]).
    tenant: Option<(String, Arc<BTreeSet<u64>>)>,
}

/// Why a request's session cannot be used.
enum NoSession {
    /// None, or not a live one: the login page.
    Missing,
    /// oned no longer accepts the tenant's token (revoked, expired, the user disabled): the
    /// session is closed.
    Ended,
    /// oned could not say which VMs are the tenant's (why is on the server's stderr).
    Unavailable,
}

/// The viewer a request's session cookie names. A tenant's VMs are asked of oned again when
/// the list is older than [`RECHECK_SECONDS`].
async fn session_viewer(app: &App, headers: &HeaderMap) -> Result<Viewer, NoSession> {
    let id = cookie(headers, SESSION_COOKIE).ok_or(NoSession::Missing)?;
    let (csrf, who) = app.sessions.get(&id, now()).ok_or(NoSession::Missing)?;
    let tenant = match who {
        Who::Admin => {
            return Ok(Viewer {
                csrf: Some(csrf),
                ids: true,
                tenant: None,
            });
        }
        Who::Tenant(t) => t,
    };
    let at = now();
    let vms = if at - tenant.checked < RECHECK_SECONDS {
        tenant.vms
    } else {
        match app.sessions.claim_recheck(&id, at) {
            // Another request of the session is asking: the list it has, a minute old.
            Claim::Underway => tenant.vms,
            Claim::BackingOff => return Err(NoSession::Unavailable),
            Claim::Gone => return Err(NoSession::Missing),
            Claim::Yours => {
                let Some(tenants) = app.tenants.clone() else {
                    app.sessions.close(&id);
                    return Err(NoSession::Ended);
                };
                let (user, token) = (tenant.user.clone(), tenant.token.clone());
                let asked = tokio::task::spawn_blocking(move || tenants.vms(&user, &token)).await;
                match asked {
                    Ok(Ok(vms)) => {
                        app.sessions.recheck_done(&id, Some(vms.clone()), now());
                        Arc::new(vms)
                    }
                    Ok(Err(Refused::Credentials)) => {
                        app.sessions.close(&id);
                        return Err(NoSession::Ended);
                    }
                    Ok(Err(e)) => {
                        eprintln!(
                            "backstop serve: oned did not say which VMs {} may see: {}",
                            tenant.user,
                            e.reason()
                        );
                        app.sessions.recheck_done(&id, None, now());
                        return Err(NoSession::Unavailable);
                    }
                    Err(_) => {
                        app.sessions.recheck_done(&id, None, now());
                        return Err(NoSession::Unavailable);
                    }
                }
            }
        }
    };
    Ok(Viewer {
        csrf: Some(csrf),
        ids: true,
        tenant: Some((tenant.user, vms)),
    })
}

/// A page's viewer: nobody in particular when no login is needed, else the session's; without
/// one, the answer (to the login page).
async fn page_viewer(app: &App, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    if app.credentials.password_hash.is_none() {
        return Ok(Viewer {
            csrf: None,
            ids: bearer_ok(app, headers),
            tenant: None,
        });
    }
    match session_viewer(app, headers).await {
        Ok(v) => Ok(v),
        Err(NoSession::Missing | NoSession::Ended) => Err(Box::new(see_other("/login"))),
        Err(NoSession::Unavailable) => {
            let mut page = html(pages::page(
                "oned cannot be asked",
                &pages::oned_unavailable(),
                cookie(headers, SESSION_COOKIE)
                    .and_then(|id| app.sessions.csrf(&id, now()))
                    .as_deref(),
                None,
            ));
            *page.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Err(Box::new(page))
        }
    }
}

/// The JSON API's and metrics' viewer: a bearer token when one is set, or a page session
/// (a tenant's sees their VMs only); nobody in particular when no credentials are set.
async fn api_viewer(app: &App, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    if !app.credentials.required() {
        return Ok(Viewer {
            csrf: None,
            ids: false,
            tenant: None,
        });
    }
    if bearer_ok(app, headers) {
        return Ok(Viewer {
            csrf: None,
            ids: true,
            tenant: None,
        });
    }
    if app.credentials.password_hash.is_some() {
        match session_viewer(app, headers).await {
            Ok(v) => return Ok(v),
            Err(NoSession::Unavailable) => {
                return Err(Box::new(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "oned cannot say which VMs are yours now; try again in a minute",
                )));
            }
            Err(NoSession::Missing | NoSession::Ended) => {}
        }
    }
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "a token is needed (Authorization: Bearer ...)",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(r))
}

/// The state as the viewer may see it: snapshot ids only for a viewer who showed a token or
/// a session (an id's first 8 hex characters authorise a restore through a backup URL); an
/// OpenNebula user's VMs only for a tenant.
async fn snapshot(app: &App, viewer: &Viewer, detail: Detail) -> Result<Snapshot, Response> {
    let path = app.state.clone();
    match tokio::task::spawn_blocking(move || Snapshot::read_with(&path, detail)).await {
        Ok(Ok(s)) => Ok(match (&viewer.tenant, viewer.ids) {
            (Some((_, vms)), _) => s.for_tenant(vms),
            (None, true) => s,
            (None, false) => s.without_ids(),
        }),
        Ok(Err(e)) => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            r.extensions_mut().insert(Reason(e.to_string()));
            Err(r)
        }
        Err(_) => Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the state failed",
        )),
    }
}

async fn overview(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    detail(&app, &headers, Detail::Summary, |s| {
        Some(("Overview".into(), pages::overview(s)))
    })
    .await
}

/// Which list page.
#[derive(Clone, Copy)]
enum Listing {
    Jobs,
    Vms,
    Datastores,
    Copies(&'static str),
}

async fn list(
    State(app): State<Arc<App>>,
    axum::extract::Query(search): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
    (title, listing): (&'static str, Listing),
) -> Response {
    // A list page's search (`?q=words`) is a few words: longer text is cut, never an error.
    let q: String = search
        .get("q")
        .map(|q| q.chars().take(200).collect())
        .unwrap_or_default();
    detail(&app, &headers, Detail::Summary, |s| {
        let body = match listing {
            Listing::Jobs => pages::jobs_list(s, &q),
            Listing::Vms => pages::vms_list(s, &q),
            Listing::Datastores => pages::datastores_list(s, &q),
            Listing::Copies(kind) => pages::copies_list(s, kind, &q),
        };
        Some((title.to_string(), body))
    })
    .await
}

async fn runs(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    detail(&app, &headers, Detail::Summary, |s| {
        Some(("Runs".into(), pages::runs(s)))
    })
    .await
}

/// A page of the state: the login checked, the state read (the points `points` names), the
/// page `render` makes of it (`None`: not found) under the scheduler's line; a state that
/// cannot be read is a page saying why.
async fn detail(
    app: &App,
    headers: &HeaderMap,
    points: Detail,
    render: impl FnOnce(&Snapshot) -> Option<(String, String)>,
) -> Response {
    let viewer = match page_viewer(app, headers).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let logout = viewer.csrf.clone();
    // Another user's VM is not read at all for a tenant: it is simply not there.
    if let (Some((_, vms)), Detail::Vm(id)) = (&viewer.tenant, points)
        && !vms.contains(&id)
    {
        return not_found_page(logout.as_deref());
    }
    match snapshot(app, &viewer, points).await {
        Ok(s) => match render(&s) {
            Some((title, body)) => html(pages::page(
                &title,
                &body,
                logout.as_deref(),
                Some(&format!(
                    "{}{}",
                    viewer
                        .tenant
                        .as_ref()
                        .map(|(user, _)| pages::tenant_line(user))
                        .unwrap_or_default(),
                    pages::scheduler_line(&s)
                )),
            )),
            None => not_found_page(logout.as_deref()),
        },
        Err(r) => page_error(r, logout.as_deref()),
    }
}

async fn job(State(app): State<Arc<App>>, UrlPath(id): UrlPath<u64>, h: HeaderMap) -> Response {
    // The action buttons carry the session's CSRF token, shown to the admin only.
    let actions = admin_csrf(&app, &h);
    detail(&app, &h, Detail::Job(id), |s| {
        pages::job(s, id, actions.as_deref())
    })
    .await
}

/// The session's CSRF token when the viewer may act from the pages: the pages have a password,
/// actions are enabled (BACKSTOP_ADMIN_TOKEN is set) and the pages' login was made an admin's
/// (BACKSTOP_WEB_ACTIONS=yes).
fn admin_csrf(app: &App, headers: &HeaderMap) -> Option<String> {
    let c = &app.credentials;
    if c.password_hash.is_none() || c.admin_token.is_none() || !c.web_actions {
        return None;
    }
    match app.sessions.get(&cookie(headers, SESSION_COOKIE)?, now())? {
        (csrf, Who::Admin) => Some(csrf),
        (_, Who::Tenant(_)) => None,
    }
}

/// `GET /jobs/{id}/retention`: what applying the job's retention plan would delete, named
/// point by point, and the form that confirms exactly that.
async fn confirm_retention(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<u64>,
    headers: HeaderMap,
) -> Response {
    let Some(csrf) = admin_csrf(&app, &headers) else {
        return text(StatusCode::FORBIDDEN, NOT_ADMIN);
    };
    let path = app.state.clone();
    let planned = tokio::task::spawn_blocking(move || {
        let st = backstop_backupjob::state::State::open(&path)?;
        ops::retention::plan(&st, &ops::retention::PlanOptions { job: id, vm: None })
    })
    .await;
    match planned {
        Ok(Ok(plan)) => html(pages::page(
            &format!("Retention plan of backup job {id} ({})", plan.name),
            &pages::confirm_retention(&plan, &csrf),
            Some(&csrf),
            None,
        )),
        Ok(Err(e)) => result_page(id, "retention", Err(ops::error_line(&e)), &csrf),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the plan could not be read",
        ),
    }
}

const NOT_ADMIN: &str = "refused: acting from the pages needs the admin's login (a page password, BACKSTOP_ADMIN_TOKEN set, and BACKSTOP_WEB_ACTIONS=yes)";

/// `POST /jobs/{id}/{action}` from a page's button: the admin's session and its CSRF token,
/// then the action as the API's, and a page saying how it went.
async fn page_action(
    State(app): State<Arc<App>>,
    UrlPath((id, action)): UrlPath<(u64, String)>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    act_from_page(&app, id, &action, &headers, &form).await
}

/// `POST /jobs/{id}/retention`: the confirmation's form (the GET of that address shows it).
async fn confirm_retention_post(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<u64>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    act_from_page(&app, id, "retention", &headers, &form).await
}

async fn act_from_page(
    app: &App,
    id: u64,
    action: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let Some(csrf) = admin_csrf(app, headers) else {
        return text(StatusCode::FORBIDDEN, NOT_ADMIN);
    };
    let given = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !same(csrf.as_bytes(), given.as_bytes()) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF token is missing or wrong",
        );
    }
    let operation = match action {
        "run" => {
            let said = spawn_run(app, id)
                .map(|()| format!("backup job {id}: a run started; its VMs show here as they go"));
            return result_page(id, action, said, &csrf);
        }
        "retry" => Operation::Retry,
        "cancel" => Operation::Cancel,
        "retention" => {
            // Exactly the points the confirmation named (their digest), and no more: the
            // plan computed now must name the same ones, however many.
            let plan = form.get("plan").cloned().unwrap_or_default();
            Operation::Retention {
                max_delete: usize::MAX,
                confirmed: Some(plan),
            }
        }
        _ => return not_found_page(Some(&csrf)),
    };
    match operation.carried_out(app, id).await {
        Ok(r) => result_page(id, action, r.map_err(|e| ops::error_line(&e)), &csrf),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the action could not be run",
        ),
    }
}

/// How a page's action went: its output (200) or its error line (409), and the way back.
fn result_page(id: u64, action: &str, said: Result<String, String>, csrf: &str) -> Response {
    let (status, body) = match said {
        Ok(out) => (StatusCode::OK, pages::action_result(id, &out, true)),
        Err(e) => (StatusCode::CONFLICT, pages::action_result(id, &e, false)),
    };
    let mut page = html(pages::page(
        &format!("Backup job {id}: {action}"),
        &body,
        Some(csrf),
        None,
    ));
    *page.status_mut() = status;
    page
}

async fn vm(State(app): State<Arc<App>>, UrlPath(id): UrlPath<u64>, h: HeaderMap) -> Response {
    detail(&app, &h, Detail::Vm(id), |s| pages::vm(s, id)).await
}

async fn datastore(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<u64>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    // `?page=N` (from 1): a datastore of 10,000 images is shown a page of them at a time.
    let page = query
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    detail(&app, &h, Detail::Datastore(id), |s| {
        pages::datastore(s, id, page)
    })
    .await
}

async fn api(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    (points, render): (Detail, fn(&Snapshot) -> serde_json::Value),
) -> Response {
    let viewer = match api_viewer(&app, &headers).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match snapshot(&app, &viewer, points).await {
        Ok(s) => (
            [(header::CONTENT_TYPE, "application/json")],
            render(&s).to_string(),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let viewer = match api_viewer(&app, &headers).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match snapshot(&app, &viewer, Detail::Summary).await {
        Ok(s) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            s.metrics(),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// `POST /api/jobs/{id}/run|retry|cancel|retention` with the admin token: the job runner's
/// own operations ([`backstop_backupjob::ops`]), called in this process. A run goes on on a
/// thread of the server (202 at once, with the server's PID); the others answer with the
/// text `backupjob retry|cancel|retention --apply --yes` prints for them.
async fn action(
    State(app): State<Arc<App>>,
    UrlPath((id, action)): UrlPath<(u64, String)>,
    headers: HeaderMap,
    query: axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| app.credentials.admin_ok(t)) {
        return text(
            StatusCode::FORBIDDEN,
            "actions need the admin token (BACKSTOP_ADMIN_TOKEN) as a bearer token",
        );
    }
    let max_delete = query.get("max_delete").map_or(Ok(10), |m| m.parse::<u32>());
    let Ok(max_delete) = max_delete else {
        return text(StatusCode::BAD_REQUEST, "max_delete is not a number");
    };
    let operation = match action.as_str() {
        "run" => return start_run(&app, id),
        "retry" => Operation::Retry,
        "cancel" => Operation::Cancel,
        "retention" => Operation::Retention {
            max_delete: max_delete as usize,
            confirmed: None,
        },
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "the actions are run, retry, cancel, retention",
            );
        }
    };
    let (ok, output, error) = match operation.carried_out(&app, id).await {
        Ok(Ok(output)) => (true, format!("{output}\n"), String::new()),
        Ok(Err(e)) => (
            false,
            String::new(),
            format!("backupjob: {}\n", ops::error_line(&e)),
        ),
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the action could not be run",
            );
        }
    };
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        },
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "job": id, "action": action, "ok": ok, "output": output, "error": error,
        })
        .to_string(),
    )
        .into_response()
}

/// The actions that answer when they are done.
#[derive(Debug, Clone)]
enum Operation {
    Retry,
    Cancel,
    Retention {
        max_delete: usize,
        confirmed: Option<String>,
    },
}

impl Operation {
    /// Carries the action out on job `id` over the server's state, on a blocking thread; the
    /// text the command line prints for it (the outer error: the thread did not finish).
    async fn carried_out(
        self,
        app: &App,
        id: u64,
    ) -> Result<Result<String, backstop_backupjob::Error>, tokio::task::JoinError> {
        let env = app.env();
        let path = app.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut st = backstop_backupjob::state::State::open(&path)?;
            self.carry_out(&env, &mut st, id)
        })
        .await
    }

    /// Carries the action out on job `id`; the text the command line prints for it.
    fn carry_out(
        self,
        env: &backstop_backupjob::runner::Env,
        st: &mut backstop_backupjob::state::State,
        id: u64,
    ) -> Result<String, backstop_backupjob::Error> {
        Ok(match self {
            Operation::Retry => {
                ops::backup::retry(st, &ops::backup::RetryOptions { job: id })?.to_string()
            }
            Operation::Cancel => {
                ops::backup::cancel(env, st, &ops::backup::CancelOptions { job: id })?.to_string()
            }
            Operation::Retention {
                max_delete,
                confirmed,
            } => ops::retention::apply(
                env,
                st,
                &ops::retention::ApplyOptions {
                    job: id,
                    vm: None,
                    max_delete,
                    confirmed,
                },
            )?
            .to_string(),
        })
    }
}

/// Starts a run of job `id` on a thread of its own and answers 202 at once, with this
/// process's PID (the run's runner: the state records it as such, so a run the server's end
/// cuts short is settled by the next run as a killed runner's). What the run says goes
/// nowhere, as the command's output did when the server started it as a process; a run that
/// could not start says why on the server's stderr.
fn start_run(app: &App, id: u64) -> Response {
    match spawn_run(app, id) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"job": id, "action": "run", "pid": std::process::id()}).to_string(),
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// The run of [`start_run`], started on a thread of its own.
fn spawn_run(app: &App, id: u64) -> Result<(), String> {
    let env = app.env();
    let path = app.state.clone();
    let started = std::thread::Builder::new()
        .name(format!("backup job {id}"))
        .spawn(move || {
            let (notify, _) = ops::notify_settings();
            let options = ops::backup::RunOptions {
                job: id,
                limits: backstop_backupjob::scheduler::Limits::default(),
                notify,
            };
            let run = backstop_backupjob::state::State::open(&path)
                .map_err(backstop_backupjob::Error::from)
                .and_then(|mut st| ops::backup::run(&env, &mut st, &options, |_| {}));
            if let Err(e) = run {
                eprintln!("backstop serve: backup job {id}: {}", ops::error_line(&e));
            }
        });
    started.map(|_| ()).map_err(|e| format!("cannot run: {e}"))
}

async fn login_form(State(app): State<Arc<App>>) -> Response {
    if app.credentials.password_hash.is_none() {
        return see_other("/");
    }
    let token = crate::auth::random_token();
    let mut r = html(pages::login(&token, false, app.tenants.is_some()));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/login"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /login`: the page password (no user name), or an OpenNebula user's name and
/// password, checked by oned, when tenants are on.
async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if app.credentials.password_hash.is_none() {
        return see_other("/");
    }
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let given = form.get("csrf").cloned().unwrap_or_default();
    if expected.is_empty() || !same(expected.as_bytes(), given.as_bytes()) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF token is missing or wrong",
        );
    }
    let password = form.get("password").cloned().unwrap_or_default();
    if password.len() > MAX_PASSWORD_BYTES {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("refused: the password is longer than {MAX_PASSWORD_BYTES} bytes"),
        );
    }
    let user = form
        .get("user")
        .map(|u| u.trim().to_string())
        .unwrap_or_default();
    let tenants = app.tenants.is_some();
    let failed = || {
        let mut r = html(pages::login(&given, true, tenants));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    // A name that cannot be OpenNebula's is refused as a wrong login, unchecked and uncounted.
    if !user.is_empty() && !crate::tenants::valid_user(&user) {
        return failed();
    }
    // The attempt counts before its password is checked, so that a burst of concurrent
    // guesses gets no more checks than the limit; those checks then run a few at a time.
    let began = now();
    if !app.sessions.begin_login(began, &user) {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins in the last minute; try again later",
        );
    }
    let who = if user.is_empty() {
        let ok = {
            let app = app.clone();
            tokio::task::spawn_blocking(move || app.checks.check(&app.credentials, &password))
                .await
                .unwrap_or(false)
        };
        if !ok {
            return failed();
        }
        Who::Admin
    } else {
        let Some(oned) = app.tenants.clone() else {
            // No OpenNebula logins here: a user name is as wrong as a wrong password.
            return failed();
        };
        let name = user.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let token = oned.login(&name, &password, crate::auth::SESSION_SECONDS)?;
            match oned.vms(&name, &token) {
                Ok(vms) => Ok((token, vms)),
                Err(e) => {
                    oned.revoke(&name, &token);
                    Err(e)
                }
            }
        })
        .await;
        match checked {
            Ok(Ok((token, vms))) => Who::Tenant(Tenant::new(user.clone(), token, vms, now())),
            Ok(Err(Refused::Credentials)) => return failed(),
            Ok(Err(e)) => {
                // Why goes to the server's log, not to whoever asked. Only an oned that could
                // not be reached makes it no wrong guess.
                eprintln!(
                    "backstop serve: the login of {user} could not be checked: {}",
                    e.reason()
                );
                if matches!(e, Refused::Unreachable(_)) {
                    app.sessions.login_succeeded(began, &user);
                }
                let mut page = html(pages::page(
                    "oned cannot be asked",
                    &pages::oned_unavailable(),
                    None,
                    None,
                ));
                *page.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return page;
            }
            Err(_) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the login could not be checked",
                );
            }
        }
    };
    app.sessions.login_succeeded(began, &user);
    let Some((id, _, ended)) = app.sessions.open(now(), who) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no session could be made",
        );
    };
    // The user's oldest session, ended to keep them within their share: its token goes too.
    if let Some(t) = ended {
        revoke_later(&app, t);
    }
    let mut r = see_other("/");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        crate::auth::SESSION_SECONDS
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Revokes a tenant's login token in oned, in the background.
fn revoke_later(app: &App, t: Tenant) {
    if let Some(oned) = app.tenants.clone() {
        drop(tokio::task::spawn_blocking(move || {
            oned.revoke(&t.user, &t.token);
        }));
    }
}

async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(id) = cookie(&headers, SESSION_COOKIE) else {
        return see_other("/login");
    };
    let given = form.get("csrf").cloned().unwrap_or_default();
    match app.sessions.csrf(&id, now()) {
        Some(csrf) if same(csrf.as_bytes(), given.as_bytes()) => {
            // A tenant's login token is revoked in oned, in the background.
            if let Some(Who::Tenant(t)) = app.sessions.close(&id) {
                revoke_later(&app, t);
            }
            let mut r = see_other("/login");
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static("backstop_session=; Max-Age=0; Path=/"),
            );
            r
        }
        _ => text(
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF token is missing or wrong",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_from_a_table() {
        for (host, ok) in [
            ("127.0.0.1:8421", true),
            ("127.0.0.1", true),
            ("127.8.9.10:1", true),
            ("localhost:8421", true),
            ("LOCALHOST", true),
            ("[::1]:8421", true),
            ("[::1]", true),
            ("evil.example:8421", false),
            ("10.0.0.1:8421", false),
            ("127.0.0.1.evil.example", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(host).expect("header"));
            assert_eq!(loopback_host(&h), ok, "{host}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }
}

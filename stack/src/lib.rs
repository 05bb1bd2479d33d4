//! One stack builder for Kapal's four services: `kapal server` (all services in one process, or
//! one service per process), kapal-tests' `TestApp` and kapal-bench compose the services here,
//! and nowhere else.
//!
//! Each service crate exposes `build(config) -> Built` ([`kapal::serve::Built`]: its routes and
//! its background work) and knows its peers only as [`Upstream`]s in its `Config`. The
//! [`Stack`] owns what is left:
//! - the listeners: it binds every service's first, so each endpoint is known before anything
//!   is built;
//! - every internal edge: a peer built earlier in this process is called in-process (its
//!   routes, no socket; [`Stack::in_process`]), anything else over the network at its
//!   endpoint. The order is provisioner, billing, control-plane, gateway, so the control-plane
//!   reaches billing and the provisioner, and the gateway reaches the control-plane and billing,
//!   in-process; billing's and the provisioner's calls to the control-plane (the other
//!   direction of a cycle) always go over its socket;
//! - shutdown: one signal for every service, each stopping its server, then its background
//!   work ([`Running::stop`]).
//!
//! Services never import each other; only this crate names all four.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use kapal::serve::Built;
pub use kapal::serve::Upstream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Where a service of the stack listens.
#[derive(Debug)]
pub enum Listen {
    /// An address to bind, e.g. `127.0.0.1:8081`, or `127.0.0.1:0` for a free port.
    Addr(String),
    /// A listener bound already (e.g. a gateway rebinding its former address).
    Bound(TcpListener),
}

impl From<&str> for Listen {
    fn from(addr: &str) -> Listen {
        Listen::Addr(addr.to_string())
    }
}

impl From<String> for Listen {
    fn from(addr: String) -> Listen {
        Listen::Addr(addr)
    }
}

impl From<TcpListener> for Listen {
    fn from(listener: TcpListener) -> Listen {
        Listen::Bound(listener)
    }
}

impl Listen {
    /// A free port on loopback.
    pub fn any_loopback() -> Listen {
        Listen::Addr("127.0.0.1:0".to_string())
    }

    async fn bind(self) -> anyhow::Result<TcpListener> {
        match self {
            Listen::Addr(addr) => kapal::serve::bind(&addr).await,
            Listen::Bound(listener) => Ok(listener),
        }
    }
}

/// One service of a stack.
#[derive(Default)]
pub enum Part<C> {
    /// Runs in this process with this configuration (its upstreams are set by the stack).
    Here(C, Listen),
    /// Runs elsewhere: its peers here reach it at this endpoint (`http://host:port`).
    Elsewhere(String),
    /// Not part of this stack: peers here keep the upstream their configuration names.
    #[default]
    Absent,
}

/// Which services run here, which elsewhere, and how they reach each other.
pub struct Stack {
    pub gateway: Part<kapal_gateway::Config>,
    pub control_plane: Part<kapal_control_plane::Config>,
    pub billing: Part<kapal_billing::Config>,
    pub provisioner: Part<kapal_provisioner::Config>,
    /// Services in this process call each other's routes directly (default); `false`: over
    /// their sockets, as when each runs in its own process (tests of that path).
    pub in_process: bool,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (a listener of its own).
    pub metrics: Option<Listen>,
}

impl Default for Stack {
    fn default() -> Stack {
        Stack {
            gateway: Part::Absent,
            control_plane: Part::Absent,
            billing: Part::Absent,
            provisioner: Part::Absent,
            in_process: true,
            metrics: None,
        }
    }
}

/// A service built, waiting for its server to start.
struct Ready {
    built: Built,
    listener: TcpListener,
}

/// The upstream of an edge to a service: its routes when it was built here (and calls stay
/// in-process), else its endpoint, else `None` (the configuration's own stays).
fn upstream(
    in_process: bool,
    built: Option<&Ready>,
    endpoint: Option<&String>,
) -> Option<Upstream> {
    match (built, endpoint) {
        (Some(ready), _) if in_process => Some(Upstream::InProcess(ready.built.routes.clone())),
        (_, Some(endpoint)) => Some(Upstream::Network(endpoint.clone())),
        _ => None,
    }
}

impl Stack {
    /// Binds every listener, builds the services (in the order that lets in-process edges
    /// exist) and starts serving. A service that fails to build stops the ones built before it
    /// (their background work is dropped, so it ends).
    pub async fn start(self) -> anyhow::Result<Running> {
        let Stack {
            gateway,
            control_plane,
            billing,
            provisioner,
            in_process,
            metrics,
        } = self;
        // Every listener first, so every endpoint is known.
        let mut running = Running::new();
        let control_plane = place(control_plane).await?;
        let billing = place(billing).await?;
        let provisioner = place(provisioner).await?;
        let gateway = place(gateway).await?;
        (running.control_plane, running.billing) = (control_plane.addr, billing.addr);
        (running.provisioner, running.gateway) = (provisioner.addr, gateway.addr);
        let (cp_endpoint, billing_endpoint, prov_endpoint) = (
            control_plane.endpoint,
            billing.endpoint,
            provisioner.endpoint,
        );
        let metrics = match metrics {
            Some(listen) => Some(listen.bind().await?),
            None => None,
        };
        running.metrics = metrics.as_ref().and_then(|l| l.local_addr().ok());

        // The recorder first: the services' metric handles are made on their first calls.
        if let Some(listener) = metrics {
            kapal::metrics::install();
            let stop = running.stopped();
            running
                .tasks
                .spawn(async move { ("metrics", kapal::metrics::serve(listener, stop).await) });
        }

        // A service that fails to build drops those built before it: their background work
        // ends with them (kapal::serve::Background's Drop). Each serves as soon as it is built
        // (its listener is bound already): the provisioner's and billing's background work
        // calls the control-plane, which is built after them, and must not wait for the rest.
        // The provisioner and billing need nothing of each other, so they are built together.
        let (prov, billing) = tokio::try_join!(
            async {
                let Some((mut config, listener)) = provisioner.here else {
                    return anyhow::Ok(None);
                };
                if let Some(u) = upstream(false, None, cp_endpoint.as_ref()) {
                    config.control_plane = Some(u);
                }
                let built = kapal_provisioner::build(config).await?;
                Ok(Some(Ready { built, listener }))
            },
            async {
                let Some((mut config, listener)) = billing.here else {
                    return anyhow::Ok(None);
                };
                if let Some(u) = upstream(false, None, cp_endpoint.as_ref()) {
                    config.control_plane = Some(u);
                }
                let built = kapal_billing::build(config).await?;
                Ok(Some(Ready { built, listener }))
            },
        )?;
        let cp_to_billing = upstream(in_process, billing.as_ref(), billing_endpoint.as_ref());
        let cp_to_prov = upstream(in_process, prov.as_ref(), prov_endpoint.as_ref());
        let gateway_to_billing = upstream(in_process, billing.as_ref(), billing_endpoint.as_ref());
        running.serve(prov);
        running.serve(billing);
        let cp = match control_plane.here {
            Some((mut config, listener)) => {
                if let Some(u) = cp_to_billing {
                    config.billing = u;
                }
                if let Some(u) = cp_to_prov {
                    config.provisioner = u;
                }
                let built = kapal_control_plane::build(config).await?;
                Some(Ready { built, listener })
            }
            None => None,
        };
        let gateway_to_cp = upstream(in_process, cp.as_ref(), cp_endpoint.as_ref());
        running.serve(cp);
        let gateway = match gateway.here {
            Some((mut config, listener)) => {
                if let Some(u) = gateway_to_cp {
                    config.control_plane = u;
                }
                if let Some(u) = gateway_to_billing {
                    config.billing = u;
                }
                let built = kapal_gateway::build(config).await?;
                Some(Ready { built, listener })
            }
            None => None,
        };
        running.serve(gateway);
        Ok(running)
    }
}

/// A part of the stack with its listener bound.
struct Placed<C> {
    /// Its configuration and listener, when it runs here.
    here: Option<(C, TcpListener)>,
    addr: Option<SocketAddr>,
    /// Where its peers reach it over the network.
    endpoint: Option<String>,
}

/// Binds the listener of a service that runs here.
async fn place<C>(part: Part<C>) -> anyhow::Result<Placed<C>> {
    Ok(match part {
        Part::Here(config, listen) => {
            let listener = listen.bind().await?;
            let addr = listener.local_addr().context("the listener's address")?;
            Placed {
                here: Some((config, listener)),
                addr: Some(addr),
                endpoint: Some(format!("http://{addr}")),
            }
        }
        Part::Elsewhere(endpoint) => Placed {
            here: None,
            addr: None,
            endpoint: Some(endpoint),
        },
        Part::Absent => Placed {
            here: None,
            addr: None,
            endpoint: None,
        },
    })
}

/// The running services of a [`Stack`].
pub struct Running {
    /// The listeners' addresses of the services that run here.
    pub gateway: Option<SocketAddr>,
    pub control_plane: Option<SocketAddr>,
    pub billing: Option<SocketAddr>,
    pub provisioner: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Running {
    /// Serves a built service on its listener until the stack stops.
    fn serve(&mut self, ready: Option<Ready>) {
        let Some(Ready { built, listener }) = ready else {
            return;
        };
        let name = built.name;
        tracing::info!(
            service = name,
            addr = ?listener.local_addr().ok(),
            "serving"
        );
        let stop = self.stopped();
        self.tasks
            .spawn(async move { (name, built.serve(listener, stop).await) });
    }

    fn new() -> Running {
        Running {
            gateway: None,
            control_plane: None,
            billing: None,
            provisioner: None,
            metrics: None,
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
        }
    }

    /// `http://addr` of a service that runs here.
    pub fn endpoint(addr: Option<SocketAddr>) -> Option<String> {
        addr.map(|a| format!("http://{a}"))
    }

    /// Completes when the stack is told to stop.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// Waits until a service stops on its own (before [`Running::stop`], that is a failure):
    /// the error saying which and why. Pending forever when nothing runs.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.tasks.join_next().await {
            Some(done) => failure(done),
            None => std::future::pending().await,
        }
    }

    /// A service that has stopped on its own already, if any (for start-up checks).
    pub fn try_failed(&mut self) -> Option<anyhow::Error> {
        self.tasks.try_join_next().map(failure)
    }

    /// Stops every service (servers first, then their background work) and waits for them;
    /// the first failure, if any (the others are logged).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut first = None;
        while let Some(done) = self.tasks.join_next().await {
            let error = match done {
                Ok((_, Ok(()))) => continue,
                Ok((name, Err(e))) => e.context(format!("{name} failed")),
                Err(e) => anyhow::anyhow!("a service task panicked: {e}"),
            };
            if first.is_none() {
                first = Some(error);
            } else {
                tracing::error!(error = %format!("{error:#}"), "service failed while stopping");
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Signals the stop and aborts every service at once, without waiting (a test's `Drop`).
    pub fn abort(&mut self) {
        let _ = self.stop.send(true);
        self.tasks.abort_all();
    }

    /// [`Running::stop`], giving up on services still running after `grace`.
    pub async fn stop_within(&mut self, grace: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(grace, self.stop()).await {
            Ok(result) => result,
            Err(_) => anyhow::bail!("services did not stop within {} s", grace.as_secs()),
        }
    }
}

fn failure(
    done: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Error {
    match done {
        Ok((name, Ok(()))) => anyhow::anyhow!("{name} stopped unexpectedly"),
        Ok((name, Err(e))) => e.context(format!("{name} failed")),
        Err(e) => anyhow::anyhow!("a service task panicked: {e}"),
    }
}

//! Which calls the gateway accepts, where each one goes and who may make it.
//!
//! The table is built from the encoded descriptors of the public API
//! ([`kapal::proto::PUBLIC_DESCRIPTOR_SET`]), so a new public method or service is routed without
//! touching the gateway. What stays here is policy: which services billing serves (everything else
//! public goes to the control-plane), which calls need no token, and which calls end sessions.
//! Anything not in the table, `kapal.internal.*` included, is UNIMPLEMENTED at the gateway.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use prost::Message as _;
use prost_types::FileDescriptorSet;

use crate::error::Error;
use crate::middleware::{Middleware, Next, Req, Res, forward};

/// Services served by billing; every other public service is served by the control-plane.
const BILLING_SERVICES: &[&str] = &[
    "kapal.v1.SubscriptionService",
    "kapal.v1.BillingAdminService",
];

/// Calls anyone may make without a token: browsing the catalog, getting a token at all, and
/// the emailed codes (verifying an address, resetting a forgotten password), whose code is the
/// proof. `service/*` means every method of the service.
const PUBLIC_CALLS: &[&str] = &[
    "kapal.v1.CatalogService/*",
    "kapal.v1.AccountService/SignUp",
    "kapal.v1.AccountService/LogIn",
    "kapal.v1.AccountService/VerifyEmail",
    "kapal.v1.AccountService/RequestPasswordReset",
    "kapal.v1.AccountService/ResetPassword",
];

/// Calls that end the caller's own session: its cached identity is dropped at once.
const ENDS_SESSION: &[&str] = &["kapal.v1.AccountService/LogOut"];
/// Calls that may revoke any token of the caller's account: all of them are re-checked.
const REVOKES_TOKENS: &[&str] = &[
    "kapal.v1.AccountService/RevokeApiToken",
    "kapal.v1.AccountService/RevokeSession",
    "kapal.v1.AccountService/ChangePassword",
];

/// The only calls a READ_ONLY API token may make: those that change nothing (as
/// `kapal.v1.ApiTokenScope` documents). Deny by default: a method added to the API is refused to
/// read-only tokens until it is listed here. `service/*` means every method of the service.
/// Not here although they read: GetInstanceAsAdmin (reading credentials writes the audit log).
const READ_ONLY_CALLS: &[&str] = &[
    "kapal.v1.CatalogService/*",
    "kapal.v1.AccountService/WhoAmI",
    "kapal.v1.AccountService/ListApiTokens",
    "kapal.v1.AccountService/ListSessions",
    "kapal.v1.OrderService/GetOrder",
    "kapal.v1.OrderService/ListOrders",
    "kapal.v1.InstanceService/ListInstances",
    "kapal.v1.InstanceService/GetInstance",
    "kapal.v1.InstanceService/WatchInstance",
    "kapal.v1.InstanceService/GetInstanceUsage",
    "kapal.v1.SubscriptionService/ListSubscriptions",
    "kapal.v1.SubscriptionService/GetSubscription",
    "kapal.v1.SubscriptionService/ListInvoices",
    "kapal.v1.SubscriptionService/ListSubscriptionEvents",
    "kapal.v1.SupportService/ListTickets",
    "kapal.v1.SupportService/GetTicket",
    "kapal.v1.AdminService/ListAllInstances",
    "kapal.v1.AdminService/GetCapacity",
    "kapal.v1.AdminService/ListAlerts",
    "kapal.v1.AdminService/GetInstanceUsage",
    "kapal.v1.AdminService/ListAuditEvents",
    "kapal.v1.BillingAdminService/GetRevenueReport",
    "kapal.v1.BillingAdminService/ListAllSubscriptions",
    "kapal.v1.BillingAdminService/ListSubscriptionEventsAsAdmin",
    "kapal.v1.BillingAdminService/ListInvoicesAsAdmin",
    "kapal.v1.SupportAdminService/ListTicketQueue",
    "kapal.v1.SupportAdminService/GetTicketAsAdmin",
    "kapal.v1.SupportAdminService/GetSupportReport",
];

/// Whether `call` (`service/Method`) of `service` is in `list` (with `service/*` wildcards).
fn listed(list: &[&str], service: &str, call: &str) -> bool {
    list.iter()
        .any(|p| *p == call || p.strip_suffix("/*") == Some(service))
}

/// Where a call is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    ControlPlane,
    Billing,
    /// By the gateway itself (health, reflection).
    Local,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::ControlPlane => "control-plane",
            Target::Billing => "billing",
            Target::Local => "gateway",
        }
    }
}

/// What a successful call does to cached identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Revokes {
    Nothing,
    /// The token that made the call (LogOut).
    CallersToken,
    /// Possibly any token of the caller's account (RevokeApiToken).
    AccountTokens,
}

/// Everything the gateway's layers need to know about one method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) target: Target,
    /// Callable without a token.
    pub(crate) public: bool,
    /// The client sends a stream of messages (so the request is not buffered).
    pub(crate) client_streaming: bool,
    /// The server answers with a stream (so no default deadline).
    pub(crate) server_streaming: bool,
    pub(crate) revokes: Revokes,
    /// Changes nothing: a READ_ONLY API token may make it ([`READ_ONLY_CALLS`]).
    pub(crate) read_only: bool,
}

/// Methods by HTTP path (`/package.Service/Method`).
#[derive(Clone, Debug)]
pub(crate) struct RouteTable(Arc<HashMap<String, Route>>);

impl RouteTable {
    /// The public API from `public_descriptors`, plus the gateway's own health and reflection.
    pub(crate) fn new(public_descriptors: &[u8]) -> anyhow::Result<RouteTable> {
        let mut routes = HashMap::new();
        let sets = [
            (public_descriptors, false),
            (tonic_health::pb::FILE_DESCRIPTOR_SET, true),
            (tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET, true),
        ];
        for (encoded, local) in sets {
            let set = FileDescriptorSet::decode(encoded)
                .context("decoding the API's protobuf descriptors")?;
            for file in &set.file {
                let package = file.package();
                // Defence in depth: the public set never has internal services anyway.
                if package.starts_with("kapal.internal") {
                    continue;
                }
                for service in &file.service {
                    let service_name = format!("{package}.{}", service.name());
                    for method in &service.method {
                        let call = format!("{service_name}/{}", method.name());
                        let target = if local {
                            Target::Local
                        } else if BILLING_SERVICES.contains(&service_name.as_str()) {
                            Target::Billing
                        } else {
                            Target::ControlPlane
                        };
                        let public = local || listed(PUBLIC_CALLS, &service_name, &call);
                        let read_only = local || listed(READ_ONLY_CALLS, &service_name, &call);
                        let revokes = if ENDS_SESSION.contains(&call.as_str()) {
                            Revokes::CallersToken
                        } else if REVOKES_TOKENS.contains(&call.as_str()) {
                            Revokes::AccountTokens
                        } else {
                            Revokes::Nothing
                        };
                        let route = Route {
                            target,
                            public,
                            client_streaming: method.client_streaming(),
                            server_streaming: method.server_streaming(),
                            revokes,
                            read_only,
                        };
                        routes.insert(format!("/{call}"), route);
                    }
                }
            }
        }
        anyhow::ensure!(
            routes.values().any(|r| r.target != Target::Local),
            "the public API descriptors contain no services"
        );
        Ok(RouteTable(Arc::new(routes)))
    }

    pub(crate) fn get(&self, path: &str) -> Option<Route> {
        self.0.get(path).copied()
    }
}

/// Looks the call up and puts its [`Route`] into the request's extensions; anything that is not
/// a method of the public API (or the gateway's own health and reflection) is UNIMPLEMENTED.
#[derive(Clone, Debug)]
pub(crate) struct Routing(pub(crate) RouteTable);

impl Middleware for Routing {
    async fn call<S: Next>(self, mut req: Req, next: S) -> Res {
        match self.0.get(req.uri().path()) {
            Some(route) => {
                req.extensions_mut().insert(route);
                forward(next, req).await
            }
            None => Error::UnknownMethod {
                path: kapal::wire::truncate(req.uri().path(), 200).to_string(),
            }
            .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new(kapal::proto::PUBLIC_DESCRIPTOR_SET).expect("table")
    }

    #[test]
    fn public_services_go_to_their_upstream() {
        let t = table();
        let get = |p: &str| t.get(p).expect(p);
        assert_eq!(
            get("/kapal.v1.SubscriptionService/ListSubscriptions").target,
            Target::Billing
        );
        assert_eq!(
            get("/kapal.v1.BillingAdminService/GetRevenueReport").target,
            Target::Billing
        );
        for path in [
            "/kapal.v1.CatalogService/ListApps",
            "/kapal.v1.AccountService/WhoAmI",
            "/kapal.v1.OrderService/Checkout",
            "/kapal.v1.InstanceService/GetInstance",
            "/kapal.v1.AdminService/ListAllInstances",
            "/kapal.v1.AdminService/GetCapacity",
            "/kapal.v1.SupportService/OpenTicket",
            "/kapal.v1.SupportAdminService/ListTicketQueue",
        ] {
            assert_eq!(get(path).target, Target::ControlPlane, "{path}");
        }
        assert_eq!(get("/grpc.health.v1.Health/Check").target, Target::Local);
    }

    #[test]
    fn internal_and_unknown_methods_are_not_routed() {
        let t = table();
        assert_eq!(
            t.get("/kapal.internal.v1.IdentityService/Authenticate"),
            None
        );
        assert_eq!(t.get("/kapal.v1.CatalogService/DeleteEverything"), None);
        assert_eq!(t.get("/"), None);
    }

    #[test]
    fn only_the_catalog_signup_and_login_are_public() {
        let t = table();
        let public = |p: &str| t.get(p).expect(p).public;
        assert!(public("/kapal.v1.CatalogService/ListApps"));
        assert!(public("/kapal.v1.CatalogService/GetApp"));
        assert!(public("/kapal.v1.AccountService/SignUp"));
        assert!(public("/kapal.v1.AccountService/LogIn"));
        assert!(public("/kapal.v1.AccountService/ResetPassword"));
        assert!(!public("/kapal.v1.AccountService/ResendVerification"));
        assert!(!public("/kapal.v1.AccountService/LogOut"));
        assert!(!public("/kapal.v1.AccountService/WhoAmI"));
        assert!(!public("/kapal.v1.InstanceService/WatchInstance"));
        assert!(!public("/kapal.v1.SubscriptionService/ListInvoices"));
        assert!(!public("/kapal.v1.SupportService/GetTicket"));
        assert!(!public("/kapal.v1.SupportAdminService/ReplyAsOperator"));
    }

    #[test]
    fn read_only_tokens_get_only_calls_that_change_nothing() {
        let t = table();
        let read_only = |p: &str| t.get(p).expect(p).read_only;
        for path in [
            "/kapal.v1.AccountService/WhoAmI",
            "/kapal.v1.AccountService/ListSessions",
            "/kapal.v1.InstanceService/WatchInstance",
            "/kapal.v1.OrderService/ListOrders",
            "/kapal.v1.SubscriptionService/ListInvoices",
            "/kapal.v1.BillingAdminService/GetRevenueReport",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(read_only(path), "{path}");
        }
        for path in [
            "/kapal.v1.AccountService/CreateApiToken",
            "/kapal.v1.AccountService/ChangePassword",
            "/kapal.v1.AccountService/RevokeSession",
            "/kapal.v1.AccountService/LogOut",
            "/kapal.v1.OrderService/Checkout",
            "/kapal.v1.InstanceService/DeleteInstance",
            "/kapal.v1.InstanceService/StopInstance",
            "/kapal.v1.SubscriptionService/CancelSubscription",
            "/kapal.v1.SubscriptionService/ChangePlan",
            "/kapal.v1.SupportService/OpenTicket",
            "/kapal.v1.AdminService/GetInstanceAsAdmin",
            "/kapal.v1.BillingAdminService/ExtendSubscription",
            "/kapal.v1.BillingAdminService/CreditInvoice",
        ] {
            assert!(!read_only(path), "{path}");
        }
        // Every listed call exists: a renamed method would otherwise silently lose its entry.
        for call in READ_ONLY_CALLS {
            let known = match call.strip_suffix("/*") {
                Some(service) => t.0.keys().any(|k| k.starts_with(&format!("/{service}/"))),
                None => t.get(&format!("/{call}")).is_some(),
            };
            assert!(known, "{call} is not a method of the public API");
        }
    }

    #[test]
    fn streaming_shape_comes_from_the_descriptors() {
        let t = table();
        let watch = t
            .get("/kapal.v1.InstanceService/WatchInstance")
            .expect("watch");
        assert!(watch.server_streaming && !watch.client_streaming);
        let get = t.get("/kapal.v1.InstanceService/GetInstance").expect("get");
        assert!(!get.server_streaming && !get.client_streaming);
        let reflection = t
            .get("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .expect("reflection");
        assert!(reflection.client_streaming && reflection.server_streaming);
    }
}

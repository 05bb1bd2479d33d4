//! The baseline: a bare tonic server answering `kapal.v1.InstanceService` with one fixed
//! `Instance` (the message the read scenario returns), no database, no authentication, no
//! logging. It runs as a child process of the benchmark (`kapal-bench echo-server`), so its CPU
//! and memory are measured the same way as `kapal server`'s; it serves gRPC and grpc-web
//! (tonic-web) on one port like the gateway.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use kapal::proto::v1::instance_service_server::{InstanceService, InstanceServiceServer};
use kapal::proto::v1::{
    Credentials, DesiredState, GetInstanceRequest, GetInstanceUsageRequest, Instance,
    InstanceActionRequest, InstanceEvent, InstanceStatus, InstanceUsage, ListInstancesRequest,
    ListInstancesResponse, WatchInstanceRequest,
};
use tokio::io::AsyncBufReadExt as _;
use tonic::{Request, Response, Status};

/// An instance shaped like a real one (ids, URL, credentials, timestamps).
pub fn sample_instance(id: &str) -> Instance {
    let now = prost_types::Timestamp {
        seconds: 1_790_000_000,
        nanos: 0,
    };
    Instance {
        id: id.to_string(),
        app_id: "n8n".into(),
        plan_id: "trial".into(),
        status: InstanceStatus::Ready as i32,
        status_reason: "All components are ready.".into(),
        desired_state: DesiredState::Running as i32,
        url: "https://c0ffee42.n8n.kapal.localhost".into(),
        hostname: "c0ffee42.n8n.kapal.localhost".into(),
        subscription_id: "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        order_id: "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c".into(),
        credentials: Some(Credentials {
            username: "owner@c0ffee42.n8n.kapal.localhost".into(),
            password: "Zk3vQw9xLp2rTn8sYb4mHc7d".into(),
            login_url: "https://c0ffee42.n8n.kapal.localhost/signin".into(),
        }),
        created_at: Some(now),
        updated_at: Some(now),
        ready_at: Some(now),
        suspended_by_billing: false,
        data_deleted_after: None,
    }
}

pub struct Echo;

type EventStream = Pin<Box<dyn Stream<Item = Result<InstanceEvent, Status>> + Send>>;

#[tonic::async_trait]
impl InstanceService for Echo {
    async fn list_instances(
        &self,
        _req: Request<ListInstancesRequest>,
    ) -> Result<Response<ListInstancesResponse>, Status> {
        Ok(Response::new(ListInstancesResponse {
            instances: vec![sample_instance("0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d")],
            next_page_token: String::new(),
        }))
    }

    async fn get_instance(
        &self,
        req: Request<GetInstanceRequest>,
    ) -> Result<Response<Instance>, Status> {
        Ok(Response::new(sample_instance(&req.get_ref().instance_id)))
    }

    type WatchInstanceStream = EventStream;

    async fn watch_instance(
        &self,
        req: Request<WatchInstanceRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let event = InstanceEvent {
            instance: Some(sample_instance(&req.get_ref().instance_id)),
            at: None,
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(event)]))))
    }

    async fn restart_instance(
        &self,
        req: Request<InstanceActionRequest>,
    ) -> Result<Response<Instance>, Status> {
        Ok(Response::new(sample_instance(&req.get_ref().instance_id)))
    }

    async fn stop_instance(
        &self,
        req: Request<InstanceActionRequest>,
    ) -> Result<Response<Instance>, Status> {
        Ok(Response::new(sample_instance(&req.get_ref().instance_id)))
    }

    async fn start_instance(
        &self,
        req: Request<InstanceActionRequest>,
    ) -> Result<Response<Instance>, Status> {
        Ok(Response::new(sample_instance(&req.get_ref().instance_id)))
    }

    async fn delete_instance(
        &self,
        req: Request<InstanceActionRequest>,
    ) -> Result<Response<Instance>, Status> {
        Ok(Response::new(sample_instance(&req.get_ref().instance_id)))
    }

    async fn get_instance_usage(
        &self,
        req: Request<GetInstanceUsageRequest>,
    ) -> Result<Response<InstanceUsage>, Status> {
        Ok(Response::new(InstanceUsage {
            instance_id: req.into_inner().instance_id,
            metrics_note: "the cluster has no metrics API".into(),
            ..Default::default()
        }))
    }

    async fn list_instance_events(
        &self,
        _: Request<kapal::proto::v1::ListInstanceEventsRequest>,
    ) -> Result<Response<kapal::proto::v1::ListInstanceEventsResponse>, Status> {
        Err(Status::unimplemented("not served by the echo server"))
    }

    async fn get_instance_diagnostics(
        &self,
        _: Request<kapal::proto::v1::GetInstanceDiagnosticsRequest>,
    ) -> Result<Response<kapal::proto::v1::InstanceDiagnostics>, Status> {
        Err(Status::unimplemented("not served by the echo server"))
    }
}

/// `kapal-bench echo-server`: serves on a free loopback port, prints `listening <addr>` on
/// stdout, and exits when its standard input closes (the benchmark ended or died).
///
/// `nodelay`: set TCP_NODELAY on accepted connections. tonic's `serve_with_incoming*` ignores
/// the builder's `tcp_nodelay` (on by default for `serve`), so a server fed a listener, as every
/// Kapal service is, runs with Nagle's algorithm unless the incoming stream sets it.
pub async fn serve_child(nodelay: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let stdin_closed = async {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    };
    tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(InstanceServiceServer::new(Echo))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(nodelay)),
            stdin_closed,
        )
        .await?;
    Ok(())
}

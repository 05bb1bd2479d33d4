//! `kapal.v1.CatalogService`: the apps customers can order. Public.

use kapal::proto::v1::catalog_service_server::CatalogService;
use kapal::proto::v1::{self as pb, GetAppRequest, ListAppsRequest, ListAppsResponse};
use tonic::{Request, Response, Status};

use crate::Ctx;

pub struct CatalogApi(pub Ctx);

pub(crate) fn app_to_wire(app: &kapal::catalog::App) -> pb::App {
    pb::App {
        id: app.id.clone(),
        name: app.name.clone(),
        description: app.description.clone(),
        version: app.version.clone(),
        documentation_url: app.documentation_url.clone(),
        plans: app
            .plans
            .iter()
            .map(|p| pb::Plan {
                id: p.id.clone(),
                name: p.name.clone(),
                monthly_price: Some(kapal::wire::idr(p.monthly_price_idr)),
                trial_days: p.trial_days,
                cpu_millis: p.cpu_millis,
                memory_mib: p.memory_mib,
                storage_gib: p.storage_gib,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn list_apps(
        &self,
        _req: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        Ok(Response::new(ListAppsResponse {
            apps: self.0.catalog.apps().map(app_to_wire).collect(),
        }))
    }

    async fn get_app(&self, req: Request<GetAppRequest>) -> Result<Response<pb::App>, Status> {
        let id = kapal::wire::required("app_id", &req.get_ref().app_id)?;
        let app = self.0.catalog.app(id).ok_or_else(|| {
            Status::not_found(format!(
                "no app {:?} in the catalog; ListApps shows the apps there are",
                kapal::wire::truncate(id, 64)
            ))
        })?;
        Ok(Response::new(app_to_wire(app)))
    }
}

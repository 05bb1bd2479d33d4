//! The catalog: `kapal catalog` (every app with its plans) and `kapal app <app>`. Both are
//! anonymous calls: no login needed.

use serde::Serialize;

use kapal::proto::v1::{App, GetAppRequest, ListAppsRequest, Plan};

use crate::args::{AppArgs, Global};
use crate::connect::{Ctx, RpcResult as _};
use crate::output::{
    MoneyJson, Render, Table, cpu, key_values, memory, money, money_json, storage,
};

pub async fn catalog(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let apps = ctx
        .catalog()
        .list_apps(ListAppsRequest {})
        .await
        .or_fail(&ctx)?
        .apps;
    ctx.print(&Catalog(apps))
}

pub async fn app(a: AppArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let app = ctx
        .catalog()
        .get_app(GetAppRequest { app_id: a.app })
        .await
        .or_fail(&ctx)?;
    ctx.print(&AppDetails(app))
}

/// The answer to `kapal catalog`: every app with its plans.
struct Catalog(Vec<App>);

#[derive(Serialize)]
struct CatalogJson<'a> {
    apps: Vec<AppJson<'a>>,
}

impl Render for Catalog {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "The catalog is empty.\n".to_string();
        }
        let mut t = Table::new(&[
            "APP", "VERSION", "PLAN", "PRICE", "TRIAL", "CPU", "MEMORY", "STORAGE",
        ]);
        for app in &self.0 {
            for p in &app.plans {
                t.row(vec![
                    app.id.clone(),
                    app.version.clone(),
                    p.id.clone(),
                    format!("{}/month", money(p.monthly_price.as_ref())),
                    trial(p),
                    cpu(p.cpu_millis),
                    memory(p.memory_mib),
                    storage(p.storage_gib),
                ]);
            }
        }
        t.render() + "\nOrder one with: kapal order <app> --plan <plan> --wait\n"
    }

    fn json(&self) -> impl Serialize {
        CatalogJson {
            apps: self.0.iter().map(AppJson::from).collect(),
        }
    }
}

/// The answer to `kapal app <app>`: the app and its plans.
struct AppDetails(App);

impl Render for AppDetails {
    fn text(&self) -> String {
        let app = &self.0;
        let mut out = key_values(&[
            ("App", app.id.clone()),
            ("Name", app.name.clone()),
            ("Version", app.version.clone()),
            ("Documentation", app.documentation_url.clone()),
            ("Description", app.description.clone()),
        ]);
        out.push('\n');
        let mut t = Table::new(&["PLAN", "NAME", "PRICE", "TRIAL", "CPU", "MEMORY", "STORAGE"]);
        for p in &app.plans {
            t.row(vec![
                p.id.clone(),
                p.name.clone(),
                format!("{}/month", money(p.monthly_price.as_ref())),
                trial(p),
                cpu(p.cpu_millis),
                memory(p.memory_mib),
                storage(p.storage_gib),
            ]);
        }
        out + &t.render()
    }

    fn json(&self) -> impl Serialize {
        AppJson::from(&self.0)
    }
}

/// An app of the catalog in JSON.
#[derive(Serialize)]
struct AppJson<'a> {
    id: &'a str,
    name: &'a str,
    description: &'a str,
    version: &'a str,
    documentation_url: &'a str,
    plans: Vec<PlanJson<'a>>,
}

impl<'a> From<&'a App> for AppJson<'a> {
    fn from(a: &'a App) -> Self {
        AppJson {
            id: &a.id,
            name: &a.name,
            description: &a.description,
            version: &a.version,
            documentation_url: &a.documentation_url,
            plans: a.plans.iter().map(PlanJson::from).collect(),
        }
    }
}

/// A plan of an app in JSON.
#[derive(Serialize)]
struct PlanJson<'a> {
    id: &'a str,
    name: &'a str,
    monthly_price: Option<MoneyJson<'a>>,
    trial_days: u32,
    cpu_millis: u32,
    memory_mib: u32,
    storage_gib: u32,
}

impl<'a> From<&'a Plan> for PlanJson<'a> {
    fn from(p: &'a Plan) -> Self {
        PlanJson {
            id: &p.id,
            name: &p.name,
            monthly_price: money_json(p.monthly_price.as_ref()),
            trial_days: p.trial_days,
            cpu_millis: p.cpu_millis,
            memory_mib: p.memory_mib,
            storage_gib: p.storage_gib,
        }
    }
}

/// `14 days`, `1 day`, or `-` for none.
fn trial(p: &Plan) -> String {
    match p.trial_days {
        0 => "-".to_string(),
        1 => "1 day".to_string(),
        n => format!("{n} days"),
    }
}

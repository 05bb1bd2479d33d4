//! The catalog: `kapal catalog` (every app with its plans) and `kapal app <app>`. Both are
//! anonymous calls: no login needed.

use serde_json::json;

use kapal::proto::v1::{GetAppRequest, ListAppsRequest};

use crate::args::{AppArgs, Global};
use crate::connect::{Ctx, RpcResult as _};
use crate::output::{Table, app_json, cpu, key_values, memory, money, print_json, storage, trial};

pub async fn catalog(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let apps = ctx
        .catalog()
        .list_apps(ListAppsRequest {})
        .await
        .or_fail(&ctx)?
        .apps;
    if ctx.json() {
        return print_json(&json!({ "apps": apps.iter().map(app_json).collect::<Vec<_>>() }));
    }
    if apps.is_empty() {
        println!("The catalog is empty.");
        return Ok(());
    }
    let mut t = Table::new(&[
        "APP", "VERSION", "PLAN", "PRICE", "TRIAL", "CPU", "MEMORY", "STORAGE",
    ]);
    for app in &apps {
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
    print!("{}", t.render());
    println!("\nOrder one with: kapal order <app> --plan <plan> --wait");
    Ok(())
}

pub async fn app(a: AppArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let app = ctx
        .catalog()
        .get_app(GetAppRequest { app_id: a.app })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&app_json(&app));
    }
    print!(
        "{}",
        key_values(&[
            ("App", app.id.clone()),
            ("Name", app.name.clone()),
            ("Version", app.version.clone()),
            ("Documentation", app.documentation_url.clone()),
            ("Description", app.description.clone()),
        ])
    );
    println!();
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
    print!("{}", t.render());
    Ok(())
}

//! Where instance pods run and which images they run: the settings a deployment gives as text
//! (`kapal server --image-map FILE --instance-node-selector key=value --instance-toleration
//! key=value:Effect`), parsed here so every mistake names the line or value to fix.
//!
//! The image map exists for the local cluster, whose real nodes pull nothing and run images built
//! on the machine (`deploy/local-cluster/images.map`); production runs the catalog's images.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Toleration;

/// Catalog image reference -> the image that runs instead.
pub type ImageMap = BTreeMap<String, String>;

/// Parses an image map: one `<catalog image> <image to run>` pair per line, separated by
/// whitespace; `#` starts a comment; blank lines are ignored. An image named twice is an error.
pub fn parse_image_map(text: &str) -> Result<ImageMap, String> {
    let mut map = ImageMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [from, to] = fields[..] else {
            return Err(format!(
                "line {}: expected `<catalog image> <local image>`, found {} field(s): {line:?}",
                n + 1,
                fields.len()
            ));
        };
        if map.insert(from.to_string(), to.to_string()).is_some() {
            return Err(format!("line {}: {from} is mapped twice", n + 1));
        }
    }
    Ok(map)
}

/// Reads and parses an image map file.
pub fn load_image_map(path: &Path) -> Result<ImageMap, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the image map {}: {e}", path.display()))?;
    parse_image_map(&text).map_err(|e| format!("the image map {}: {e}", path.display()))
}

/// The image a pod runs for the catalog's `image`.
pub fn image(map: &ImageMap, image: &str) -> String {
    map.get(image).cloned().unwrap_or_else(|| image.to_string())
}

/// Parses `key=value` (a node label the pods select).
pub fn parse_node_label(s: &str) -> Result<(String, String), String> {
    match s.trim().split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Parses a toleration written like the taint it tolerates (`kubectl taint`'s syntax):
/// `key=value:Effect` (operator Equal), `key:Effect` (operator Exists), with Effect one of
/// NoSchedule, PreferNoSchedule, NoExecute.
pub fn parse_toleration(s: &str) -> Result<Toleration, String> {
    let bad = |why: &str| {
        format!(
            "{s:?} is not a toleration ({why}); write key=value:Effect or key:Effect, Effect one of NoSchedule, PreferNoSchedule, NoExecute"
        )
    };
    let (taint, effect) = s.trim().rsplit_once(':').ok_or_else(|| bad("no :Effect"))?;
    if !EFFECTS.contains(&effect) {
        return Err(bad(&format!("unknown effect {effect:?}")));
    }
    let (key, value) = match taint.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (taint, None),
    };
    if key.is_empty() {
        return Err(bad("no key"));
    }
    Ok(Toleration {
        key: Some(key.to_string()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_string()),
        value,
        effect: Some(effect.to_string()),
        ..Toleration::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_map_reads_pairs_and_names_the_bad_line() {
        let map = parse_image_map(
            "# local builds\n\nmariadb:11.4.7  localhost/kapal/mariadb:10.11.19 # Debian's\n\twordpress:6.8.1-php8.3-apache\tlocalhost/kapal/wordpress:6.1.9\n",
        )
        .expect("a map");
        assert_eq!(
            map,
            ImageMap::from([
                (
                    "mariadb:11.4.7".to_string(),
                    "localhost/kapal/mariadb:10.11.19".to_string()
                ),
                (
                    "wordpress:6.8.1-php8.3-apache".to_string(),
                    "localhost/kapal/wordpress:6.1.9".to_string()
                ),
            ])
        );
        assert_eq!(
            image(&map, "mariadb:11.4.7"),
            "localhost/kapal/mariadb:10.11.19"
        );
        assert_eq!(image(&map, "ghost:5.116.2"), "ghost:5.116.2");

        let e = parse_image_map("a b\nmariadb:11.4.7\n").expect_err("one field");
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse_image_map("a b\na c\n").expect_err("twice");
        assert_eq!(e, "line 2: a is mapped twice");
        let e = parse_image_map("a b c\n").expect_err("three fields");
        assert!(e.contains("3 field(s)"), "{e}");
    }

    #[test]
    fn the_checked_in_local_cluster_map_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster/images.map");
        let map = load_image_map(&path).expect("deploy/local-cluster/images.map");
        assert!(map.contains_key("mariadb:11.4.7"), "{map:?}");
        assert!(
            map.values().all(|v| v.starts_with("localhost/kapal/")),
            "{map:?}"
        );
    }

    #[test]
    fn tolerations_read_like_taints() {
        let t = parse_toleration("kapal.dev/real-node=true:NoSchedule").expect("toleration");
        assert_eq!(
            (
                t.key.as_deref(),
                t.operator.as_deref(),
                t.value.as_deref(),
                t.effect.as_deref()
            ),
            (
                Some("kapal.dev/real-node"),
                Some("Equal"),
                Some("true"),
                Some("NoSchedule")
            )
        );
        let t = parse_toleration("dedicated:NoExecute").expect("toleration");
        assert_eq!(
            (t.operator.as_deref(), t.value, t.effect.as_deref()),
            (Some("Exists"), None, Some("NoExecute"))
        );
        for bad in [
            "",
            "key=value",
            "key=value:Sometimes",
            ":NoSchedule",
            "=v:NoSchedule",
        ] {
            let e = parse_toleration(bad).expect_err(bad);
            assert!(e.contains("key=value:Effect"), "{e}");
        }
        assert_eq!(
            parse_node_label(" kapal.dev/real-node = true "),
            Ok(("kapal.dev/real-node".to_string(), "true".to_string()))
        );
        assert!(parse_node_label("novalue").is_err());
        assert!(parse_node_label("=v").is_err());
    }
}

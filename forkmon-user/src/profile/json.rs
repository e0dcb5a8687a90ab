//! `--json`: the profile as one JSON document. Its schema is
//! docs/profile.schema.json, described in docs/profile.md; a change to
//! the fields is a change to both, and to `analysis::SCHEMA` when it is
//! not only an addition.
use super::analysis::Profile;

pub fn render(profile: &Profile) -> String {
    let mut text = serde_json::to_string_pretty(profile).expect("a profile always serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::analysis::tests::{analyze_in, open, run_of};
    use serde_json::Value;

    /// The schema shipped in docs/, as the integration test validates
    /// whole runs against it.
    fn schema() -> Value {
        serde_json::from_str(include_str!("../../../docs/profile.schema.json")).unwrap()
    }

    /// Every object the schema describes names the same fields as the
    /// profile has: a field added to one is added to the other.
    #[test]
    fn the_schema_names_every_field() {
        let mut failed = open(3, 100, "/w/missing.py");
        failed.ret = -2;
        let mut threaded = open(4, 100, "/w/t.py");
        threaded.threads = Some(2);
        let run = run_of(vec![
            open(2, 100, "/w/pkg/__pycache__/a.cpython-311.pyc"),
            failed,
            threaded,
        ]);
        let profile: Value = serde_json::from_str(&render(&analyze_in("/w", &run, &[]))).unwrap();
        let schema = schema();
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let defs = &schema["$defs"];
        for (value, described) in [
            (&profile, &schema),
            (&profile["summary"], &defs["summary"]),
            (&profile["processes"][0], &defs["process"]),
            (&profile["processes"][0]["execs"][0], &defs["exec"]),
            (&profile["opens"][0], &defs["open"]),
            (&profile["summary"]["best_checkpoints"][0], &defs["best"]),
            (&profile["summary"]["suggested_filter"], &defs["suggestion"]),
        ] {
            assert_eq!(keys(value), keys(&described["properties"]), "{described}");
        }
        // Optional fields: each present in one file or another.
        let files = profile["files"].as_array().unwrap();
        let union = |part: &dyn Fn(&Value) -> &Value| {
            let mut all: Vec<String> = files.iter().flat_map(|f| keys(part(f))).collect();
            all.sort();
            all.dedup();
            all
        };
        assert_eq!(union(&|f| f), keys(&defs["file"]["properties"]));
        assert_eq!(
            union(&|f| &f["checkpoint"]),
            keys(&defs["checkpoint"]["properties"])
        );
        assert_eq!(
            schema["properties"]["schema"]["const"],
            crate::profile::analysis::SCHEMA
        );
    }
}

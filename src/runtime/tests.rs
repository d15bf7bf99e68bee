use super::*;

fn load(file: Option<&str>, extra: &[(&str, &str)]) -> Result<Runtimes, RuntimeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runtimes.toml");
    let file = file.map(|text| {
        std::fs::write(&path, text).expect("write");
        path.clone()
    });
    let extra = extra
        .iter()
        .map(|(name, path)| ((*name).to_owned(), PathBuf::from(path)))
        .collect();
    Runtimes::load(&Sources { file, extra })
}

fn expansion<'a>(args: &'a [String]) -> Expansion<'a> {
    Expansion {
        source: "main.py",
        name: "Main",
        memory_mb: 256,
        work: "/work",
        args,
    }
}

#[test]
fn the_built_in_shells_are_offered_with_absolute_programs() {
    let runtimes = load(None, &[]).expect("built-ins");
    let sh = runtimes.get("sh").expect("every Linux host has /bin/sh");
    let Program::Host(program) = &sh.run.program else {
        panic!("sh runs a host program: {sh:?}");
    };
    assert!(
        program.is_absolute() && program.ends_with("sh"),
        "{program:?}"
    );
    assert_eq!(sh.source_file(""), "main.sh");
    for runtime in runtimes.iter() {
        for program in runtime.host_programs() {
            assert!(program.is_absolute(), "{runtime:?}");
        }
    }
}

#[test]
fn a_run_command_puts_the_source_and_the_jobs_arguments_where_it_says() {
    let runtimes = load(None, &[]).expect("built-ins");
    let Some(python) = runtimes.get("python") else {
        crate::testing::skip(
            "a_run_command_puts_the_source_and_the_jobs_arguments_where_it_says",
            "no python3",
        );
        return;
    };
    let args = vec!["a b".to_owned(), "{source}".to_owned()];
    assert_eq!(
        python.run.argv(&expansion(&args)),
        ["-E", "-s", "-B", "main.py", "a b", "{source}"],
        "an argument is passed as it is, placeholders and all"
    );
}

#[test]
fn placeholders_fill_in_and_doubled_braces_stay_braces() {
    let e = expansion(&[]);
    assert_eq!(expand("-XX:MaxRAM={memory_mb}m", &e), "-XX:MaxRAM=256m");
    assert_eq!(expand("{work}/.cache/{name}", &e), "/work/.cache/Main");
    assert_eq!(expand("{{source}}", &e), "{source}");
}

#[test]
fn an_alias_names_its_runtime() {
    let runtimes = load(None, &[]).expect("built-ins");
    if let Some(python) = runtimes.get("python") {
        let by_alias = runtimes.get("python3").expect("the alias");
        assert_eq!(by_alias.name, python.name);
        assert_eq!(by_alias.terms("").name, "python", "jobs store the name");
    }
}

#[test]
fn the_java_source_file_is_named_after_the_public_class() {
    let text = r#"
        [runtimes.j]
        source_file = "{name}.java"
        name_from = 'public\s+class\s+(\w+)'
        name_default = "Main"
        run = ["/bin/sh", "{name}"]
    "#;
    let runtimes = load(Some(text), &[]).expect("definition");
    let j = runtimes.get("j").expect("offered");
    assert_eq!(j.source_file("public class Hello { }"), "Hello.java");
    assert_eq!(j.source_file("class hidden { }"), "Main.java");
    assert_eq!(j.terms("public class Hello {}").source_file, "Hello.java");
}

#[test]
fn an_operator_definition_replaces_a_built_in_one_of_the_same_name() {
    let text = "[runtimes.sh]\nsource_file = \"job\"\nrun = [\"/bin/sh\", \"-e\", \"{source}\"]\n";
    let runtimes = load(Some(text), &[]).expect("definition");
    let sh = runtimes.get("sh").expect("offered");
    assert!(sh.operator);
    assert_eq!(sh.source_file(""), "job");
    assert_eq!(sh.run.argv(&expansion(&[])), ["-e", "main.py"]);
}

#[test]
fn a_disabled_built_in_is_withdrawn() {
    let runtimes = load(Some("[runtimes.sh]\ndisabled = true\n"), &[]).expect("withdrawal");
    assert!(runtimes.get("sh").is_none());
}

#[test]
fn an_operator_runtime_whose_program_is_missing_stops_the_load_with_what_is_missing() {
    let text =
        "[runtimes.gone]\nsource_file = \"m\"\nrun = [\"/nonexistent/interp\", \"{source}\"]\n";
    let error = load(Some(text), &[]).expect_err("refused").to_string();
    assert!(error.contains("runtime gone"), "{error}");
    assert!(error.contains("/nonexistent/interp is missing"), "{error}");
    let bare = "[runtimes.gone]\nsource_file = \"m\"\nrun = [\"no-such-tool\"]\n";
    let error = load(Some(bare), &[]).expect_err("refused").to_string();
    assert!(
        error.contains("no-such-tool is not in /usr/local/bin, /usr/bin, /bin"),
        "{error}"
    );
}

#[test]
fn a_built_in_runtime_whose_tools_are_missing_is_listed_as_unavailable_not_offered() {
    let runtimes = load(None, &[]).expect("built-ins");
    for unavailable in runtimes.unavailable() {
        assert!(runtimes.get(&unavailable.name).is_none(), "{unavailable:?}");
        assert!(!unavailable.missing.is_empty());
    }
    let offered = runtimes.iter().count() + runtimes.unavailable().len();
    let defined = definition::parse(BUILTIN).expect("built-ins").len();
    assert_eq!(
        offered, defined,
        "every built-in is either offered or said missing"
    );
}

#[test]
fn a_malformed_file_stops_the_load_with_the_line() {
    let error = load(
        Some("[runtimes.x]\nsource_file = \"m\"\nrun = [\"sh\"]\nshell = true\n"),
        &[],
    )
    .expect_err("refused")
    .to_string();
    assert!(error.contains("line 4"), "{error}");
    assert!(error.contains("shell"), "{error}");
    let missing = Runtimes::load(&Sources {
        file: Some("/nonexistent/runtimes.toml".into()),
        extra: Vec::new(),
    })
    .expect_err("refused")
    .to_string();
    assert!(missing.contains("cannot read the runtimes file /nonexistent/runtimes.toml"));
}

#[test]
fn an_extra_runtime_runs_its_interpreter_on_a_file_named_main() {
    let runtimes = load(None, &[("dash", "/bin/sh")]).expect("extra");
    let dash = runtimes.get("dash").expect("offered");
    assert_eq!(dash.run.program, Program::Host("/bin/sh".into()));
    assert_eq!(dash.source_file(""), "main");
    let error = load(None, &[("gone", "/nonexistent/interp")])
        .expect_err("a missing interpreter stops the load")
        .to_string();
    assert!(error.contains("from --runtime"), "{error}");
}

#[test]
fn a_bind_glob_matches_what_is_there_and_a_plain_bind_must_exist() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["java-17", "java-21", "javascript"] {
        std::fs::create_dir(dir.path().join(name)).expect("mkdir");
    }
    let found = expand_bind(&dir.path().join("java-*")).expect("glob");
    assert_eq!(
        found,
        [dir.path().join("java-17"), dir.path().join("java-21")]
    );
    assert!(
        expand_bind(&dir.path().join("none-*"))
            .expect("glob")
            .is_empty()
    );
    assert!(expand_bind(&dir.path().join("missing")).is_err());
    assert!(glob_matches("a*c", "abc") && glob_matches("*", "") && !glob_matches("a*c", "ab"));
}

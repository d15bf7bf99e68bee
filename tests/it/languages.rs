//! Every built-in runtime, through the real server and the real sandbox: a hello world, stdin,
//! arguments, a program its compiler (or interpreter) refuses, one that fails at run time with
//! the error named in its verdict, and its memory limit honoured both ways — a program over it
//! ends `memory_limit`, and one well within it runs, whatever its runtime reserves up front (the
//! JVM's heap, Go's arenas). Each runtime's cases are one suite, so a compiled one also shows its
//! builds shared between identical programs.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::batches::{all_cases, builds_are_removed, case_ends, finished, submit};
use crate::util::Server;

/// One runtime's programs.
struct Language {
    runtime: &'static str,
    hello: &'static str,
    /// Prints its first line of stdin.
    echo: &'static str,
    /// Prints its arguments joined by `|`.
    args: &'static str,
    /// Refused before it runs: by the compiler, or by the interpreter's parser.
    refused: &'static str,
    /// Fails at run time with an error saying `boom`.
    fails: &'static str,
    /// Touches about 512 MiB.
    hog: &'static str,
    /// Touches about 32 MiB and prints `ok`.
    modest: &'static str,
}

const LANGUAGES: &[Language] = &[
    Language {
        runtime: "python",
        hello: "print('hello')",
        echo: "print(input())",
        args: "import sys\nprint('|'.join(sys.argv[1:]))",
        refused: "def f(:\n",
        fails: "raise ValueError('boom')",
        hog: "x = [1] * (64 * 1024 * 1024)",
        modest: "x = [1] * (4 * 1024 * 1024)\nprint('ok')",
    },
    Language {
        runtime: "bash",
        hello: "echo hello",
        echo: "read -r line; echo \"$line\"",
        args: "IFS='|'; echo \"$*\"",
        refused: "if then fi",
        fails: "echo boom >&2; exit 3",
        hog: "x=$(head -c 536870912 /dev/zero | tr '\\0' a); echo ${#x}",
        modest: "x=$(head -c 1048576 /dev/zero | tr '\\0' a); echo ok",
    },
    Language {
        runtime: "sh",
        hello: "echo hello",
        echo: "read -r line; echo \"$line\"",
        args: "IFS='|'; echo \"$*\"",
        refused: "if then fi",
        fails: "echo boom >&2; exit 3",
        hog: "x=$(head -c 536870912 /dev/zero | tr '\\0' a); echo ${#x}",
        modest: "x=$(head -c 1048576 /dev/zero | tr '\\0' a); echo ok",
    },
    Language {
        runtime: "c",
        hello: "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
        echo: "#include <stdio.h>\nint main(void) { char b[100]; if (fgets(b, sizeof b, stdin)) fputs(b, stdout); return 0; }\n",
        args: "#include <stdio.h>\nint main(int c, char **v) { for (int i = 1; i < c; i++) printf(\"%s%s\", i > 1 ? \"|\" : \"\", v[i]); puts(\"\"); return 0; }\n",
        refused: "int main( {\n",
        fails: "#include <stdio.h>\nint main(void) { fprintf(stderr, \"boom\\n\"); return 3; }\n",
        hog: "#include <stdio.h>\n#include <stdlib.h>\nint main(void) { size_t n = 512u << 20; char *p = malloc(n); long sum = 0; for (size_t i = 0; i < n; i += 4096) p[i] = (char)i; for (size_t i = 0; i < n; i += 4096) sum += p[i]; printf(\"%ld\\n\", sum); return 0; }\n",
        modest: "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\nint main(void) { char *p = malloc(32u << 20); memset(p, 1, 32u << 20); puts(p[99] ? \"ok\" : \"no\"); return 0; }\n",
    },
    Language {
        runtime: "cpp",
        hello: "#include <iostream>\nint main() { std::cout << \"hello\" << std::endl; }\n",
        echo: "#include <iostream>\n#include <string>\nint main() { std::string s; std::getline(std::cin, s); std::cout << s << std::endl; }\n",
        args: "#include <iostream>\nint main(int c, char **v) { for (int i = 1; i < c; i++) std::cout << (i > 1 ? \"|\" : \"\") << v[i]; std::cout << std::endl; }\n",
        refused: "int main() { return x; }\n",
        fails: "#include <stdexcept>\nint main() { throw std::runtime_error(\"boom\"); }\n",
        hog: "#include <vector>\nint main() { std::vector<char> v(512u << 20, 1); return v[4096] - 1; }\n",
        modest: "#include <iostream>\n#include <vector>\nint main() { std::vector<char> v(32u << 20, 1); std::cout << (v[99] ? \"ok\" : \"no\") << std::endl; }\n",
    },
    Language {
        runtime: "javascript",
        hello: "console.log('hello')",
        echo: "console.log(require('fs').readFileSync(0, 'utf8').split('\\n')[0])",
        args: "console.log(process.argv.slice(2).join('|'))",
        refused: "function (",
        fails: "throw new Error('boom')",
        hog: "const a = []; for (let i = 0; i < 64; i++) a.push(Buffer.alloc(8 << 20, 1)); console.log(a.length)",
        modest: "const b = Buffer.alloc(32 << 20, 1); console.log(b[99] ? 'ok' : 'no')",
    },
    Language {
        runtime: "typescript",
        hello: "console.log('hello');",
        echo: "declare function require(name: string): any;\nconst line: string = require('fs').readFileSync(0, 'utf8').split('\\n')[0];\nconsole.log(line);\n",
        args: "declare const process: { argv: string[] };\nconsole.log(process.argv.slice(2).join('|'));\n",
        refused: "const x: number = 'not a number';\n",
        fails: "throw new Error('boom');\n",
        hog: "const a: number[][] = [];\nfor (let i = 0; i < 64; i++) a.push(new Array(1 << 20).fill(i));\nconsole.log(a.length);\n",
        modest: "const a: number[] = new Array(1 << 20).fill(1);\nconsole.log(a[99] ? 'ok' : 'no');\n",
    },
    Language {
        runtime: "java",
        hello: "public class Hello { public static void main(String[] a) { System.out.println(\"hello\"); } }\n",
        echo: "import java.util.Scanner;\npublic class Echo { public static void main(String[] a) { System.out.println(new Scanner(System.in).nextLine()); } }\n",
        args: "public class Args { public static void main(String[] a) { System.out.println(String.join(\"|\", a)); } }\n",
        refused: "public class Main { void }\n",
        fails: "public class Main { public static void main(String[] a) { throw new IllegalStateException(\"boom\"); } }\n",
        hog: "public class Main { public static void main(String[] a) { byte[][] k = new byte[64][]; for (int i = 0; i < 64; i++) k[i] = new byte[8 << 20]; System.out.println(k.length); } }\n",
        modest: "public class Main { public static void main(String[] a) { byte[] b = new byte[32 << 20]; b[99] = 1; System.out.println(b[99] == 1 ? \"ok\" : \"no\"); } }\n",
    },
    Language {
        runtime: "go",
        hello: "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n",
        echo: "package main\n\nimport (\n\t\"bufio\"\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\ts := bufio.NewScanner(os.Stdin)\n\ts.Scan()\n\tfmt.Println(s.Text())\n}\n",
        args: "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n\t\"strings\"\n)\n\nfunc main() { fmt.Println(strings.Join(os.Args[1:], \"|\")) }\n",
        refused: "package main\n\nfunc main() { x }\n",
        fails: "package main\n\nfunc main() { panic(\"boom\") }\n",
        hog: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tb := make([]byte, 512<<20)\n\tfor i := range b {\n\t\tb[i] = 1\n\t}\n\tfmt.Println(len(b))\n}\n",
        modest: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tb := make([]byte, 32<<20)\n\tfor i := range b {\n\t\tb[i] = 1\n\t}\n\tif b[99] == 1 {\n\t\tfmt.Println(\"ok\")\n\t}\n}\n",
    },
    Language {
        runtime: "rust",
        hello: "fn main() { println!(\"hello\"); }\n",
        echo: "fn main() { let mut s = String::new(); std::io::stdin().read_line(&mut s).unwrap(); print!(\"{s}\"); }\n",
        args: "fn main() { println!(\"{}\", std::env::args().skip(1).collect::<Vec<_>>().join(\"|\")); }\n",
        refused: "fn main() { let }\n",
        fails: "fn main() { panic!(\"boom\"); }\n",
        hog: "fn main() { let v = vec![1u8; 512 << 20]; println!(\"{}\", v[4096]); }\n",
        modest: "fn main() { let v = vec![1u8; 32 << 20]; if v[99] == 1 { println!(\"ok\"); } }\n",
    },
    Language {
        runtime: "ruby",
        hello: "puts 'hello'",
        echo: "puts gets",
        args: "puts ARGV.join('|')",
        refused: "def f(\n",
        fails: "raise 'boom'",
        hog: "s = 'x' * (512 << 20)\nputs s.size",
        modest: "s = 'x' * (32 << 20)\nputs 'ok'",
    },
    Language {
        runtime: "perl",
        hello: "print \"hello\\n\";",
        echo: "my $l = <STDIN>; print $l;",
        args: "print join('|', @ARGV), \"\\n\";",
        refused: "sub {",
        fails: "die \"boom\\n\";",
        hog: "my $s = 'x' x (512 << 20); print length($s), \"\\n\";",
        modest: "my $s = 'x' x (32 << 20); print \"ok\\n\";",
    },
    Language {
        runtime: "php",
        hello: "<?php echo \"hello\\n\";",
        echo: "<?php echo fgets(STDIN);",
        args: "<?php echo implode('|', array_slice($argv, 1)), \"\\n\";",
        refused: "<?php function (",
        fails: "<?php throw new Exception('boom');",
        hog: "<?php $s = str_repeat('x', 512 << 20); echo strlen($s), \"\\n\";",
        modest: "<?php $s = str_repeat('x', 32 << 20); echo \"ok\\n\";",
    },
];

/// The compiled runtimes: their refused program is a compile error, the others' a failed run.
const COMPILED: &[&str] = &["c", "cpp", "typescript", "java", "go", "rust"];

/// Runs every program of `language` as one suite and checks each case's verdict.
async fn speaks(server: &Server, offered: &[String], language: &Language) {
    let runtime = language.runtime;
    if !offered.iter().any(|name| name == runtime) {
        crate::util::skip(
            &format!("languages::{runtime}"),
            &format!("the {runtime} runtime is not installed on this host"),
        );
        return;
    }
    let refused_verdict = match COMPILED.contains(&runtime) {
        true => "compile_error",
        false => "runtime_error",
    };
    let suite = json!({
        "runtime": runtime,
        "cases": [
            {"name": "hello", "code": language.hello, "expected_output": "hello"},
            {"name": "hello again", "code": language.hello, "expected_output": "hello"},
            {"name": "stdin", "code": language.echo, "stdin": "a line\nanother\n",
             "expected_output": "a line"},
            {"name": "args", "code": language.args, "args": ["one", "two words", "-x"],
             "expected_output": "one|two words|-x"},
            {"name": "refused", "code": language.refused},
            {"name": "fails", "code": language.fails},
            {"name": "hog", "code": language.hog, "limits": {"memory_mb": 128}},
            {"name": "modest", "code": language.modest, "expected_output": "ok",
             "limits": {"memory_mb": 256}},
        ],
    });
    let accepted = submit(server, &suite).await;
    let id = accepted["id"].as_str().expect("batch id");
    let batch = finished(server, id).await;
    let cases = all_cases(server, id, 20).await;
    let case = |name: &str| -> &Value {
        cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{runtime}: no case {name}: {batch}"))
    };
    let expect = |name: &str, verdict: &str| {
        let found = case(name);
        assert_eq!(found["verdict"], verdict, "{runtime} {name}: {found}");
    };
    for name in ["hello", "hello again", "stdin", "args", "modest"] {
        expect(name, "passed");
    }
    expect("refused", refused_verdict);
    expect("fails", "runtime_error");
    let detail = case("fails")["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("boom"),
        "{runtime}: the verdict names the error: {detail:?}"
    );
    expect("hog", "memory_limit");
    if COMPILED.contains(&runtime) {
        let ends = case_ends(server, id);
        let shared = ends.iter().filter(|(_, build)| build == "shared").count();
        assert_eq!(
            shared, 1,
            "{runtime}: only the second of the two identical programs shares a build: {ends:?}"
        );
        builds_are_removed(server).await;
    }
}

async fn offered(server: &Server) -> Vec<String> {
    let (status, body) = server.get("/v1/runtimes").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["runtimes"]
        .as_array()
        .expect("runtimes")
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

/// The interpreted runtimes share a server; each compiled one gets its own below, so that their
/// builds run side by side.
#[tokio::test]
async fn the_interpreted_runtimes_run_hello_stdin_args_and_their_errors_within_their_limits() {
    let server = Server::start().await;
    let names = offered(&server).await;
    for language in LANGUAGES.iter().filter(|l| !COMPILED.contains(&l.runtime)) {
        speaks(&server, &names, language).await;
    }
}

macro_rules! compiled {
    ($($test:ident: $runtime:literal,)*) => {$(
        #[tokio::test]
        async fn $test() {
            let server = Server::start().await;
            let names = offered(&server).await;
            let language = LANGUAGES
                .iter()
                .find(|l| l.runtime == $runtime)
                .expect("a language of the table");
            speaks(&server, &names, language).await;
        }
    )*};
}

compiled! {
    c_compiles_once_per_program_and_runs_within_its_limits: "c",
    cpp_compiles_once_per_program_and_runs_within_its_limits: "cpp",
    typescript_compiles_once_per_program_and_runs_within_its_limits: "typescript",
    java_names_the_file_after_its_class_and_runs_within_its_limits: "java",
    go_compiles_with_its_cache_in_the_work_directory_and_runs_within_its_limits: "go",
    rust_compiles_once_per_program_and_runs_within_its_limits: "rust",
}

#[tokio::test]
async fn the_runtimes_are_listed_with_their_versions_aliases_and_limits() {
    let server = Server::start().await;
    let (status, body) = server.get("/v1/runtimes").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let runtimes = body["runtimes"].as_array().expect("runtimes");
    let python = runtimes
        .iter()
        .find(|r| r["name"] == "python")
        .expect("python is offered");
    assert!(
        python["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("Python 3")),
        "{python}"
    );
    assert_eq!(python["compiled"], false);
    assert!(
        python["aliases"]
            .as_array()
            .expect("aliases")
            .contains(&json!("python3"))
    );
    assert_eq!(python["limits"]["default"]["memory_mb"], 512);
    assert!(python["limits"]["max"]["memory_mb"].as_u64().is_some());
    let c = runtimes
        .iter()
        .find(|r| r["name"] == "c")
        .expect("c is offered");
    assert_eq!(c["compiled"], true);
    assert!(c["compile_limits"]["wall_ms"].as_u64().is_some(), "{c}");
    assert!(
        c["version"].as_str().is_some_and(|v| v.contains("gcc")),
        "{c}"
    );
    // A job may name a runtime by an alias; it is stored under the runtime's name.
    let id = server
        .submit(json!({"runtime": "python3", "code": "print('by alias')"}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["runtime"], "python", "{job}");
    assert_eq!(job["stdout"], "by alias\n", "{job}");
}

#[tokio::test]
async fn a_runtimes_file_adds_a_language_and_a_broken_one_stops_the_server_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("runtimes.toml");
    std::fs::write(
        &file,
        "[runtimes.upper]\nsource_file = \"main.txt\"\nrun = [\"tr\", \"a-z\", \"A-Z\"]\n",
    )
    .expect("write");
    let server = Server::start_with(&["--runtimes", file.to_str().expect("utf-8")]).await;
    let id = server
        .submit(json!({"runtime": "upper", "code": "ignored", "stdin": "shout"}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["stdout"], "SHOUT", "{job}");

    std::fs::write(
        &file,
        "[runtimes.upper]\nsource_file = \"main.txt\"\nrun = [\"tr\"]\nsandboxed = false\n",
    )
    .expect("write");
    let started = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", "127.0.0.1:0", "--runtimes"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .expect("kiln serve");
    assert!(!started.status.success());
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("sandboxed"), "{stderr}");
    assert!(
        !dir.path().join("kiln.db").exists(),
        "nothing is created for a server that cannot start"
    );
}

#[tokio::test]
async fn kiln_submit_picks_the_runtime_from_the_shebang_or_the_extension_and_kiln_runtimes_lists_them()
 {
    let server = Server::start().await;
    let dir = server.dir.path();
    std::fs::write(
        dir.join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"from c\"); return 0; }\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("tool"),
        "#!/usr/bin/env python3\nprint('from python')\n",
    )
    .expect("write");
    std::fs::write(dir.join("notes.txt"), "hello\n").expect("write");
    for (file, printed) in [("hello.c", "from c"), ("tool", "from python")] {
        let out = server.kiln(&["submit", file, "--wait"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{file}: {stdout} {out:?}");
        assert!(stdout.contains(printed), "{file}: {stdout}");
    }
    let refused = server.kiln(&["submit", "notes.txt"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("kiln runtimes") && stderr.contains("--runtime"),
        "{stderr}"
    );

    let listed = server.kiln(&["runtimes"]);
    assert!(listed.status.success(), "{listed:?}");
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let python = stdout
        .lines()
        .find(|l| l.starts_with("python "))
        .unwrap_or_else(|| panic!("python is listed: {stdout}"));
    assert!(
        python.contains("Python 3") && python.contains("aliases: python3"),
        "{python}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("c ") && l.contains("(compiled)")),
        "{stdout}"
    );
}

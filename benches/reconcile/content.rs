//! Content of the upstream repositories.

use super::*;

pub(crate) fn svc_name(i: usize) -> String {
    format!("s{i:02}")
}

/// The four files of one service (about 5 KiB): its `etc` directory.
pub(crate) fn service_files(svc: &str, rev: usize) -> Vec<(String, String)> {
    let mut main = format!("# {svc}: main configuration, revision {rev}\n");
    for i in 0..40 {
        let _ = writeln!(main, "option_{i:02} = \"{svc}-value-{}\"", i * 7 + rev);
    }
    let mut listen = String::new();
    for i in 0..5 {
        let _ = writeln!(listen, "listen 127.0.{}.{i}:{}", rev % 250, 8000 + i);
    }
    let mut limits = String::new();
    for i in 0..10 {
        let _ = writeln!(limits, "limit_{i} = {}", 1024 << (i % 8));
    }
    let mut mime = String::from("# media types\n");
    for i in 0..120 {
        let _ = writeln!(mime, "application/x-{svc}-type-{i:03}    ext{i:03} e{i:03}");
    }
    let base = format!("svc/{svc}/etc");
    vec![
        (format!("{base}/{svc}.conf"), main),
        (format!("{base}/conf.d/10-listen.conf"), listen),
        (format!("{base}/conf.d/20-limits.conf"), limits),
        (format!("{base}/mime.types"), mime),
    ]
}

pub(crate) fn service_link(svc: &str) -> String {
    format!("svc/{svc}/etc")
}

/// ansible-pull's playbook for the first `n` services: the service's
/// directory copied into `dest`, and a handler standing in for the reload
/// (there is no systemd here) that appends to a file.
pub(crate) fn playbook(n: usize) -> String {
    let items: Vec<String> = (0..n).map(svc_name).collect();
    format!(
        r#"- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: service files
      ansible.builtin.copy:
        src: "{{{{ playbook_dir }}}}/svc/{{{{ item }}}}/etc/"
        dest: "{{{{ dest }}}}/{{{{ item }}}}/"
      loop: [{}]
      notify: reload
  handlers:
    - name: reload
      ansible.builtin.command: "sh -c 'echo reload >> {{{{ dest }}}}/reloads'"
"#,
        items.join(", ")
    )
}

pub(crate) fn playbook_name(n: usize) -> String {
    format!("pull-{n}.yml")
}

/// Commits the first `services` services' files and the playbooks for
/// `playbooks` service counts; returns the head.
pub(crate) fn seed(up: &Upstream, services: usize, playbooks: &[usize]) -> String {
    let mut files: Vec<(String, String)> = Vec::new();
    for i in 0..services {
        files.extend(service_files(&svc_name(i), 0));
    }
    for &n in playbooks {
        files.push((playbook_name(n), playbook(n)));
    }
    files.push((
        "README.md".into(),
        "Configuration of the bench fleet.\n".into(),
    ));
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    up.commit("main", &refs, "fleet configuration")
}

/// Lets clients ask for a partial clone, as hosting servers do.
pub(crate) fn allow_filter(up: &Upstream) {
    common::run(common::git_cmd(up.bare()).args(["config", "uploadpack.allowFilter", "true"]));
}

/// `count` lightweight tags on the head, packed like a server's refs.
pub(crate) fn add_tags(up: &Upstream, count: usize) {
    add_refs(up, "refs/tags/v", count);
}

/// `count` branches besides `main`, on its head, packed.
pub(crate) fn add_branches(up: &Upstream, count: usize) {
    add_refs(up, "refs/heads/feature-", count);
}

/// `count` refs named `PREFIX00000`… on the head, packed.
fn add_refs(up: &Upstream, prefix: &str, count: usize) {
    if count == 0 {
        return;
    }
    let head = up.head("main");
    let mut input = String::new();
    for i in 0..count {
        let _ = writeln!(input, "create {prefix}{i:05} {head}");
    }
    let mut cmd = common::git_cmd(up.bare());
    cmd.args(["update-ref", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawning git update-ref");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("writing tags to git update-ref");
    assert!(
        child.wait().expect("waiting for git update-ref").success(),
        "git update-ref --stdin failed"
    );
    common::run(common::git_cmd(up.bare()).args(["pack-refs", "--all"]));
}

/// One commit adding `files` files of about 1 KiB under `data/`, written
/// with fast-import straight into the bare repository.
pub(crate) fn add_large_tree(up: &Upstream, files: usize) -> String {
    let parent = up.head("main");
    let mut stream = String::with_capacity(files * 1200);
    let msg = "data: large tree\n";
    let _ = write!(
        stream,
        "commit refs/heads/main\nauthor {a} <{ae}> 1700000000 +0000\ncommitter {a} <{ae}> 1700000000 +0000\ndata {}\n{msg}from {parent}\n",
        msg.len(),
        a = common::AUTHOR_NAME,
        ae = common::AUTHOR_EMAIL,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for f in 0..files {
        let mut content = String::with_capacity(1100);
        while content.len() < 1000 {
            // xorshift: content that does not compress to nothing.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let _ = writeln!(content, "{x:016x} {f}");
        }
        let _ = write!(
            stream,
            "M 100644 inline data/d{:03}/f{f:05}.txt\ndata {}\n{content}\n",
            f / 100,
            content.len()
        );
    }
    stream.push_str("done\n");
    let mut cmd = common::git_cmd(up.bare());
    cmd.args(["fast-import", "--quiet", "--done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawning git fast-import");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stream.as_bytes())
        .expect("writing to git fast-import");
    assert!(
        child.wait().expect("waiting for git fast-import").success(),
        "git fast-import failed"
    );
    up.head("main")
}

#!/usr/bin/env python3
"""Writes the Debian changelog and the RPM %changelog from CHANGELOG.md.

Usage: changelog.py debian > debian/changelog
       changelog.py rpm    > target/assets/rpm-changelog
       changelog.py release VERSION DATE   (rewrites CHANGELOG.md: the
           Unreleased entries become VERSION's, dated DATE)
Entries are the `## VERSION (YYYY-MM-DD)` sections; "Unreleased" is left
out of the packages' changelogs.
"""
import datetime
import re
import sys

MAINTAINER = "provision maintainers <maintainers@users.noreply.r-seed-3fc34090.example>"


def releases(text):
    """[(version, date, [item, ...])], newest first."""
    out = []
    for m in re.finditer(r"^## (\S+) \((\d{4}-\d{2}-\d{2})\)\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        items, cur = [], None
        for line in m.group(3).splitlines():
            if line.startswith("- "):
                cur = [line[2:].strip()]
                items.append(cur)
            elif line.startswith("  ") and cur is not None:
                cur.append(line.strip())
        out.append((m.group(1), m.group(2), [" ".join(i) for i in items]))
    return out


def wrap(text, width, first, rest):
    words, lines, line = text.split(), [], first
    for w in words:
        if len(line) + len(w) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = rest
        line += w + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def debian(rels):
    out = []
    for version, date, items in rels:
        d = datetime.datetime.strptime(date, "%Y-%m-%d").replace(hour=9, tzinfo=datetime.timezone.utc)
        out.append(f"provision ({version}-1) unstable; urgency=medium\n")
        out += [wrap(i, 76, "  * ", "    ") for i in items]
        out.append(f"\n -- {MAINTAINER}  {d.strftime('%a, %d %b %Y %H:%M:%S +0000')}\n")
    return "\n".join(out)


def rpm(rels):
    out = ["%changelog"]
    for version, date, items in rels:
        d = datetime.datetime.strptime(date, "%Y-%m-%d")
        out.append(f"* {d.strftime('%a %b %d %Y')} {MAINTAINER} - {version}-1")
        out += [wrap(i, 76, "- ", "  ") for i in items]
        out.append("")
    return "\n".join(out)


def release(text, version, date):
    if f"## {version} (" in text:
        sys.exit(f"CHANGELOG.md already has {version}")
    return text.replace("## Unreleased\n", f"## Unreleased\n\n## {version} ({date})\n", 1)


def main():
    with open("CHANGELOG.md", encoding="utf-8") as f:
        text = f.read()
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "debian":
        sys.stdout.write(debian(releases(text)))
    elif what == "rpm":
        sys.stdout.write(rpm(releases(text)))
    elif what == "release" and len(sys.argv) == 4:
        with open("CHANGELOG.md", "w", encoding="utf-8") as f:
            f.write(release(text, sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

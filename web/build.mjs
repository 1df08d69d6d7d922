// Builds the web pages a node serves (qnet/web.py) into node/qnet/webroot/, or --out DIR.
//
//   node web/build.mjs [--out DIR]
//
// First, when package-lock.json changed since the last install (or node_modules is missing),
// `npm ci --ignore-scripts` installs the pinned dependencies. Then, for each page, esbuild
// bundles src/<page>/main.js with its npm dependencies into one ES module and
// src/<page>/<page>.css (which may @import uPlot's css and ../common/*.css) into one
// stylesheet, both named by their content hash (static/<page>-<hash>.js|css: served with a
// long max-age, immutable). The page's src/<page>/index.html becomes <page>.html: its
// references /static/<page>.js and /static/<page>.css are rewritten to the hashed names and
// given their subresource-integrity hash (sha384). manifest.json lists the pages and every
// static file with its hash. What the page's CSP would refuse (inline script or style, event
// handler attributes) or a reference to a file the build does not make fails the build.
//
// The output is written aside and put in place whole, so a failed build leaves the previous
// one as it was.

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const WEB = dirname(fileURLToPath(import.meta.url));
const PAGES = ["wallet", "status"]; // served as /wallet and /status (qnet/web.py PAGES)
const MANIFEST_VERSION = 1;
const INSTALLED_STAMP = join(WEB, "node_modules", ".qnet-lockfile-sha256");

class BuildError extends Error {}

function sha(algorithm, data, encoding = "hex") {
  return createHash(algorithm).update(data).digest(encoding);
}

function parseArgs(argv) {
  let out = resolve(WEB, "..", "node", "qnet", "webroot");
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out" && i + 1 < argv.length) {
      out = resolve(argv[++i]);
    } else {
      throw new BuildError(`unknown argument ${JSON.stringify(argv[i])}; usage: build.mjs [--out DIR]`);
    }
  }
  return { out };
}

// npm ci only when the lockfile is not the one last installed: it deletes node_modules first.
function installDependencies() {
  const lockHash = sha("sha256", readFileSync(join(WEB, "package-lock.json")));
  const installed = existsSync(INSTALLED_STAMP) ? readFileSync(INSTALLED_STAMP, "utf8") : "";
  if (installed === lockHash) {
    return;
  }
  console.log("web: package-lock.json changed, running npm ci");
  const done = spawnSync("npm", ["ci", "--ignore-scripts", "--no-audit", "--no-fund"], {
    cwd: WEB,
    stdio: "inherit",
  });
  if (done.error || done.status !== 0) {
    throw new BuildError(`npm ci failed (${done.error ?? `exit ${done.status}`})`);
  }
  writeFileSync(INSTALLED_STAMP, lockHash);
}

function pageSources(page) {
  const dir = join(WEB, "src", page);
  return { html: join(dir, "index.html"), js: join(dir, "main.js"), css: join(dir, `${page}.css`) };
}

function checkSources() {
  const missing = PAGES.flatMap((page) => Object.values(pageSources(page))).filter(
    (path) => !existsSync(path),
  );
  if (missing.length) {
    throw new BuildError(
      "missing page sources (each page needs index.html, main.js and <page>.css):\n  " +
        missing.map((path) => relative(WEB, path)).join("\n  "),
    );
  }
}

async function bundle(esbuild, outdir) {
  const entryPoints = PAGES.flatMap((page) => {
    const src = pageSources(page);
    return [
      { in: src.js, out: page },
      { in: src.css, out: page },
    ];
  });
  const result = await esbuild.build({
    entryPoints,
    outdir,
    entryNames: "[name]-[hash]",
    bundle: true,
    format: "esm",
    target: "es2022",
    minify: true,
    legalComments: "eof",
    metafile: true,
    logLevel: "warning",
    absWorkingDir: WEB,
    // Everything a page needs is in its two files: no chunks, no images or fonts beside them.
    splitting: false,
  }).catch((error) => {
    throw new BuildError(`esbuild: ${error.message}`);
  });
  // Logical name (wallet.js) -> the file written (wallet-HASH.js).
  const built = new Map();
  for (const [path, output] of Object.entries(result.metafile.outputs)) {
    const name = basename(path);
    if (!output.entryPoint) {
      throw new BuildError(`esbuild wrote ${name}, which no page references`);
    }
    if (output.cssBundle) {
      throw new BuildError(
        `${output.entryPoint} imports CSS: import it from the page's <page>.css instead`,
      );
    }
    const logical = name.replace(/-[A-Z0-9]+(\.(js|css))$/, "$1");
    if (built.has(logical)) {
      throw new BuildError(`two outputs named ${logical}`);
    }
    built.set(logical, name);
  }
  return built;
}

// What the page's CSP would refuse, or what the build itself writes.
const FORBIDDEN_ELEMENTS = [
  [/^<script\b(?![^>]*\ssrc=)/i, "an inline <script> (the CSP refuses inline script)"],
  [/^<style\b/i, "a <style> element (the CSP refuses inline style)"],
];
const FORBIDDEN_ATTRIBUTES = [
  [/\sstyle\s*=/i, "a style attribute (the CSP refuses inline style)"],
  [/\son[a-z]+\s*=/i, "an event handler attribute (the CSP refuses inline script)"],
  [/\sintegrity\s*=/i, "an integrity attribute (the build adds them)"],
  [/=\s*["']?\s*javascript:/i, "a javascript: URL (the CSP refuses it)"],
];

// The page's HTML with /static/<page>.js|css replaced by the hashed names and their SRI.
function renderPage(page, html, built, hashes) {
  const source = `src/${page}/index.html`;
  for (const element of html.match(/<[a-z][^>]*>/gi) ?? []) {
    for (const [pattern, what] of [...FORBIDDEN_ELEMENTS, ...FORBIDDEN_ATTRIBUTES]) {
      if (pattern.test(element)) {
        throw new BuildError(`${source} has ${what}: ${element}`);
      }
    }
  }
  const referenced = new Set();
  const rendered = html.replace(/<(script|link)\b[^>]*>/gi, (element, kind) => {
    const isScript = kind.toLowerCase() === "script";
    if (!isScript && !/\srel="stylesheet"/i.test(element)) {
      return element;
    }
    const attribute = isScript ? "src" : "href";
    const match = element.match(new RegExp(`\\s${attribute}="/static/([^"]+)"`));
    const expected = isScript ? `${page}.js` : `${page}.css`;
    if (!match || match[1] !== expected) {
      throw new BuildError(`${source}: ${element} must load /static/${expected}`);
    }
    if (isScript && !/\stype="module"/i.test(element)) {
      throw new BuildError(`${source}: ${element} needs type="module" (the bundle is an ES module)`);
    }
    referenced.add(expected);
    const file = built.get(expected);
    return element.replace(
      match[0],
      ` ${attribute}="/static/${file}" integrity="${hashes.get(file)}"`,
    );
  });
  for (const logical of [`${page}.js`, `${page}.css`]) {
    if (!referenced.has(logical)) {
      throw new BuildError(`${source} does not load /static/${logical}`);
    }
  }
  const made = new Set(built.values());
  for (const [, name] of rendered.matchAll(/\/static\/([^"'\s>]*)/g)) {
    if (!made.has(name)) {
      throw new BuildError(`${source} references /static/${name}, which the build does not make`);
    }
  }
  return rendered;
}

async function build({ out }) {
  checkSources();
  installDependencies();
  const esbuild = await import("esbuild");
  const scratch = `${out}.building-${process.pid}`;
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(dirname(scratch), { recursive: true });
  try {
    const built = await bundle(esbuild, join(scratch, "static"));
    const hashes = new Map();
    for (const file of built.values()) {
      const data = readFileSync(join(scratch, "static", file));
      hashes.set(file, `sha384-${sha("sha384", data, "base64")}`);
    }
    const pages = {};
    for (const page of PAGES) {
      const html = readFileSync(pageSources(page).html, "utf8");
      writeFileSync(join(scratch, `${page}.html`), renderPage(page, html, built, hashes));
      pages[page] = `${page}.html`;
    }
    const files = Object.fromEntries(
      [...hashes].sort(([a], [b]) => (a < b ? -1 : 1)).map(([f, h]) => [`static/${f}`, h]),
    );
    const manifest = { version: MANIFEST_VERSION, pages, files };
    writeFileSync(join(scratch, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
    rmSync(out, { recursive: true, force: true });
    renameSync(scratch, out);
    for (const [file, hash] of Object.entries(files)) {
      const size = readFileSync(join(out, file)).length;
      console.log(`web: ${relative(process.cwd(), join(out, file))} ${size} bytes ${hash}`);
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

try {
  await build(parseArgs(process.argv.slice(2)));
} catch (error) {
  if (error instanceof BuildError) {
    console.error(`web build failed: ${error.message}`);
    process.exit(1);
  }
  throw error;
}

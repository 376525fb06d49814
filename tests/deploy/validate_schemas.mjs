// Validates Kubernetes objects (a JSON array on stdin) against the OpenAPI schemas that the npm packages
// kubernetes-models, @kubernetes-models/prometheus-operator, @kubernetes-models/gateway-api and
// @kubernetes-models/cert-manager ship. argv[2]: their node_modules folder. LeaderWorkerSet has no published
// model: its leader/worker templates are validated as PodTemplateSpec. InferencePool (Gateway API Inference
// Extension) has none either: check_manifests.py validates it against the CRD schema in tests/deploy/schemas/,
// so it is skipped here.
// Prints one line per problem; exits 1 if any.
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nm = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));

function modelFile(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "monitoring.coreos.com") {
    return join(nm, "@kubernetes-models/prometheus-operator", group, version, kind + ".js");
  }
  if (group === "gateway.networking.k8s.io") {
    return join(nm, "@kubernetes-models/gateway-api", group, version, kind + ".js");
  }
  if (group === "cert-manager.io") {
    return join(nm, "@kubernetes-models/cert-manager", group, version, kind + ".js");
  }
  return join(nm, "kubernetes-models", group, version, kind + ".js");
}

async function validateAs(file, exportName, data, what) {
  if (!existsSync(file)) return [`${what}: no schema (${file})`];
  const mod = await import(pathToFileURL(file).href);
  try {
    new mod[exportName](data).validate();
    return [];
  } catch (e) {
    return [`${what}: ${e.message}`];
  }
}

const problems = [];
let checked = 0;
for (const o of objects) {
  const what = `${o.kind}/${o.metadata?.name}`;
  if (o.apiVersion?.startsWith("inference.networking.k8s.io/")) continue;
  if (o.kind === "LeaderWorkerSet") {
    const t = o.spec?.leaderWorkerTemplate ?? {};
    for (const key of ["leaderTemplate", "workerTemplate"]) {
      if (!t[key]) { problems.push(`${what}: spec.leaderWorkerTemplate.${key} missing`); continue; }
      const f = join(nm, "kubernetes-models", "v1", "PodTemplateSpec.js");
      problems.push(...await validateAs(f, "PodTemplateSpec", t[key], `${what} ${key}`));
      checked++;
    }
    continue;
  }
  problems.push(...await validateAs(modelFile(o.apiVersion, o.kind), o.kind, o, what));
  checked++;
}
for (const p of problems) console.log(p);
console.log(`schema-validated ${checked} objects, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);

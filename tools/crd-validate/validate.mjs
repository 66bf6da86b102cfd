// Reads a JSON array of Kubernetes objects on stdin and validates each
// monitoring.coreos.com/v1 object against prometheus-operator's API schema,
// as generated into @kubernetes-models/prometheus-operator (pinned in
// package-lock.json). Prints a JSON array with one entry per object:
// {"kind", "name", "errors": [..]} (no errors: valid). Exit status 0 when all
// are valid, 1 otherwise, 2 on an object of another API group.
import { readFileSync } from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = { PodMonitor, PrometheusRule };
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
let status = 0;
for (const object of objects) {
  const model = models[object.kind];
  if (object.apiVersion !== "monitoring.coreos.com/v1" || !model) {
    console.error(`not a PodMonitor or PrometheusRule: ${object.apiVersion} ${object.kind}`);
    process.exit(2);
  }
  const errors = [];
  try {
    new model(object).validate();
  } catch (error) {
    errors.push(String(error.message));
    status = 1;
  }
  results.push({ kind: object.kind, name: object.metadata?.name, errors });
}
console.log(JSON.stringify(results));
process.exit(status);

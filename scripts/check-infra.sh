#!/usr/bin/env bash
# Static checks of the AWS deployment (infra/): cfn-lint and `sam validate --lint` on the SAM
# template (no credentials needed with --lint; plain `sam validate` calls AWS), and the terraform
# module — `terraform fmt -check` plus `terraform validate` when the binaries can run here, and
# always a real HCL2 parse + structure check (scripts/check-terraform.py) so a machine without
# terraform still catches a broken module. `terraform validate` needs the AWS provider plugin,
# which comes from the Terraform registry (not reachable from CI here): it runs only when
# `terraform init -backend=false` succeeds, and says so when it does not.
# Then the operator side of observability.md: the sync-health alarms of both definitions, the
# Prometheus rules and the Grafana dashboard against the spec's names (scripts/check-observability.py),
# and `promtool check rules` + the rules' unit tests where promtool is installed.
set -euo pipefail
export TF_CLI_CONFIG_FILE=${TF_CLI_CONFIG_FILE:-/dev/null}  # no ~/.terraformrc warning noise
cd "$(dirname "$0")/.."

fail=0
echo "cfn-lint infra/sam/template.yaml"
if ! cfn-lint infra/sam/template.yaml; then fail=1; fi
echo "sam validate --lint -t infra/sam/template.yaml"
if command -v sam >/dev/null 2>&1; then
  if ! SAM_CLI_TELEMETRY=0 sam validate --lint -t infra/sam/template.yaml; then fail=1; fi
else
  echo "sam (aws-sam-cli) not installed: run scripts/setup.sh" >&2
  fail=1
fi

if [ -d infra/terraform ]; then
  echo "HCL2 structure check of infra/terraform"
  if ! python3 scripts/check-terraform.py infra/terraform; then fail=1; fi
  if command -v terraform >/dev/null 2>&1; then
    echo "terraform fmt -check -recursive infra/terraform"
    if ! terraform fmt -check -recursive -diff infra/terraform; then fail=1; fi
    work=$(mktemp -d)
    cp -r infra/terraform/. "$work/"
    if (cd "$work" && timeout 60 terraform init -backend=false -input=false >/dev/null 2>&1); then
      echo "terraform validate"
      if ! (cd "$work" && terraform validate); then fail=1; fi
    else
      echo "terraform validate skipped: the AWS provider could not be installed (no registry access)"
    fi
    rm -rf "$work"
  else
    echo "terraform not installed: fmt -check and validate skipped (HCL2 parse check ran)"
  fi
fi
echo "observability: sync-health alarms, Prometheus rules, Grafana dashboard (scripts/check-observability.py)"
if ! python3 scripts/check-observability.py; then fail=1; fi
if command -v promtool >/dev/null 2>&1; then
  echo "promtool check rules + test rules infra/prometheus"
  if ! promtool check rules infra/prometheus/edge-sync-rules.yml; then fail=1; fi
  if ! promtool test rules infra/prometheus/edge-sync-rules.test.yml; then fail=1; fi
else
  echo "promtool not installed (scripts/setup.sh installs it): rule check and unit tests skipped (the YAML + expression check ran)"
fi
exit "$fail"

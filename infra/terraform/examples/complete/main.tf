# A root configuration that deploys the module (docs/deploy.md 2b): the provider block the module
# itself leaves to its caller, the inputs, and the module's outputs re-exported so that
# `terraform output` (and `terraform output -raw device_policy_name` in step 3) shows them.
#
#   cd infra/terraform/examples/complete
#   cp terraform.tfvars.example terraform.tfvars   # then edit
#   terraform init && terraform plan && terraform apply

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = { Project = "edge-sync" }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1"
}
variable "topic_slug" { type = string }
variable "database_secret_arn" { type = string }
variable "database_host" {
  type    = string
  default = ""
}
variable "jwt_issuer" { type = string }
variable "jwt_audience" { type = list(string) }
variable "iot_data_endpoint" {
  type    = string
  default = ""
}
variable "subnet_ids" { type = list(string) }
variable "security_group_ids" { type = list(string) }
variable "alarm_topic_arn" {
  type    = string
  default = ""
}
variable "lambda_artifacts_dir" { type = string }
variable "metrics_lineage_cap" {
  type    = number
  default = 100
}
variable "metrics_silent_after" {
  type    = string
  default = "15m"
}

module "edge_sync" {
  source               = "../.."
  name                 = "edge-sync"
  topic_slug           = var.topic_slug
  database_secret_arn  = var.database_secret_arn
  database_host        = var.database_host
  jwt_issuer           = var.jwt_issuer
  jwt_audience         = var.jwt_audience
  iot_data_endpoint    = var.iot_data_endpoint
  subnet_ids           = var.subnet_ids
  security_group_ids   = var.security_group_ids
  alarm_topic_arn      = var.alarm_topic_arn
  lambda_artifacts_dir = var.lambda_artifacts_dir
  metrics_lineage_cap  = var.metrics_lineage_cap
  metrics_silent_after = var.metrics_silent_after
}

output "device_policy_name" { value = module.edge_sync.device_policy_name }
output "api_url" { value = module.edge_sync.api_url }
output "ingest_queue_url" { value = module.edge_sync.ingest_queue_url }
output "ingest_dead_letter_queue_url" { value = module.edge_sync.ingest_dead_letter_queue_url }
output "replay_queue_url" { value = module.edge_sync.replay_queue_url }
output "spill_bucket_name" { value = module.edge_sync.spill_bucket_name }
output "topic_slug" { value = module.edge_sync.topic_slug }
output "function_names" { value = module.edge_sync.function_names }

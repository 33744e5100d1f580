variable "name" {
  description = "Prefix for every resource name (the SAM stack name plays this role)."
  type        = string
  default     = "edge-sync"
}

variable "topic_slug" {
  description = "First topic level of every device ({slug}/{thing name}/sync/...). The IoT policy and topic rules accept only this slug."
  type        = string
  default     = "edge"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]+$", var.topic_slug))
    error_message = "topic_slug: letters, digits, '_' and '-' only."
  }
}

variable "database_secret_arn" {
  description = "ARN of the Secrets Manager secret (or SSM SecureString parameter) holding the PostgreSQL URL (RDS Proxy endpoint), or RDS-style JSON credentials (an RDS-managed master secret holds only username and password: set database_host too)."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:(secretsmanager|ssm):", var.database_secret_arn))
    error_message = "database_secret_arn must be a Secrets Manager or SSM ARN."
  }
}

variable "database_sslrootcert" {
  description = "EDGE_DB_SSLROOTCERT: CA bundle the Lambdas verify the database certificate against (verify-full unless the URL says otherwise). \"system\" fits RDS Proxy (Amazon public roots); a direct RDS endpoint needs the RDS CA bundle shipped with the functions, e.g. /opt/rds/global-bundle.pem from a layer (docs/deploy.md \"Database TLS\")."
  type        = string
  default     = "system"
}

variable "database_host" {
  description = "Optional EDGE_DATABASE_HOST: the host a JSON credentials secret is used with (the RDS Proxy endpoint); needed for an RDS-managed master secret, wins over a secret's own host."
  type        = string
  default     = ""
}

variable "database_port" {
  description = "Optional EDGE_DATABASE_PORT (default: the secret's port, else 5432)."
  type        = string
  default     = ""
}

variable "database_name" {
  description = "Optional EDGE_DATABASE_NAME (default: the secret's dbname, else postgres)."
  type        = string
  default     = ""
}

variable "jwt_secret_arn" {
  description = "Optional secret ARN with an HS256 key for API calls that bypass the gateway authorizer (empty: gateway claims only)."
  type        = string
  default     = ""
}

variable "jwt_issuer" {
  description = "Issuer (iss) the HTTP API's JWT authorizer accepts."
  type        = string
}

variable "jwt_audience" {
  description = "Audiences (aud / client ids) the JWT authorizer accepts."
  type        = list(string)
}

variable "jwt_claim_org" {
  description = "Token claim holding the organization UUID (EDGE_JWT_CLAIM_ORG): a claim name such as custom:org_id, or a dotted path into nested claims."
  type        = string
  default     = "org_id"
}

variable "jwt_claim_projects" {
  description = "Token claim holding the project UUIDs (EDGE_JWT_CLAIM_PROJECTS): an array, or a string separated by spaces or commas."
  type        = string
  default     = "projects"
}

variable "jwt_claim_permissions" {
  description = "Token claim holding the permissions (EDGE_JWT_CLAIM_PERMISSIONS), e.g. cognito:groups or scope."
  type        = string
  default     = "permissions"
}

variable "jwt_scope_prefix" {
  description = "Optional (EDGE_JWT_SCOPE_PREFIX): only permission values with this prefix count, prefix removed, e.g. edge/ for Cognito resource-server scopes."
  type        = string
  default     = ""
}

variable "iot_data_endpoint" {
  description = "IoT data-plane host (aws iot describe-endpoint --endpoint-type iot:Data-ATS); empty: the sweep Lambda calls iot:DescribeEndpoint, which needs a route to the IoT control plane (set it in a VPC without internet access)."
  type        = string
  default     = ""
}

variable "subnet_ids" {
  description = "Private subnets for the Lambdas (routes or VPC endpoints to RDS Proxy, Secrets Manager, IoT data, SQS)."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups allowed to reach the RDS Proxy on 5432."
  type        = list(string)
}

variable "spill_retention_days" {
  description = "Days spill objects are kept."
  type        = number
  default     = 14
}

variable "event_bus_name" {
  description = "EventBridge bus the sweep Lambda forwards governance events to (source edge-sync, detail-type = the event type, e.g. integration.edge_table_lineage.ingestion_paused.v1; docs/deploy.md step 5); \"default\" is the account's bus."
  type        = string
  default     = "default"
  validation {
    condition     = can(regex("^[A-Za-z0-9._/-]+$", var.event_bus_name))
    error_message = "event_bus_name must be a bus name (letters, digits, . _ / -), not an ARN."
  }
}

variable "alarm_topic_arn" {
  description = "Optional SNS topic notified by the alarms (queue, error and sync-health alarms) when they go into ALARM; empty = no alarm action."
  type        = string
  default     = ""
}

variable "metrics_lineage_cap" {
  description = "EDGE_METRICS_LINEAGE_CAP: how many lineages (worst first) get their own edge_lineage_* metrics in the sweep's EMF lines; the rest count in edge_metrics_lineage_series_dropped. Each EMF dimension combination is a billed custom metric, hence 100 (the runner's default is 500)."
  type        = number
  default     = 100
  validation {
    condition     = var.metrics_lineage_cap >= 0 && floor(var.metrics_lineage_cap) == var.metrics_lineage_cap
    error_message = "metrics_lineage_cap must be a whole number >= 0."
  }
}

variable "metrics_silent_after" {
  description = "EDGE_METRICS_SILENT_AFTER: a device whose newest batch is older than this (and younger than 24 h) counts in edge_devices_silent, which the devices_silent alarm watches. A number with s, m, h or d (e.g. 15m, 900s)."
  type        = string
  default     = "15m"
  validation {
    condition     = can(regex("^[0-9]+[smhd]?$", var.metrics_silent_after))
    error_message = "metrics_silent_after: a number with an optional unit s, m, h or d, e.g. 15m."
  }
}

variable "ingest_reserved_concurrency" {
  description = "Caps ingest Lambdas (and so database connections: concurrency x EDGE_DB_POOL_SIZE); SQS buffers bursts."
  type        = number
  default     = 20
}

variable "lambda_artifacts_dir" {
  description = "Where `cargo lambda build --release --arm64 --output-format zip` left <function>/bootstrap.zip (scripts/build-lambdas.sh: ~/.cache/edge-sync/target-lambda/lambda)."
  type        = string
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of the Lambda log groups."
  type        = number
  default     = 30
}

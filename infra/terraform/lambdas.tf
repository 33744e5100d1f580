# The four Rust Lambdas (arm64, provided.al2023), one IAM role each with only what that function
# does. Artifacts: `cargo lambda build --release --arm64 --output-format zip` (scripts/build-lambdas.sh
# with EDGE_LAMBDA_ZIP=1) leaves <function>/bootstrap.zip under var.lambda_artifacts_dir.
locals {
  database_secret_is_ssm = can(regex("^arn:aws[a-z-]*:ssm:", var.database_secret_arn))
  common_env = merge(
    {
      RUST_LOG                 = "info"
      EDGE_DATABASE_SECRET_ARN = var.database_secret_arn
      EDGE_DB_POOL_SIZE        = "2"
      EDGE_DB_SSLROOTCERT      = var.database_sslrootcert
      # Metrics (observability.md §1): the Lambdas write EMF lines to stdout, which reach
      # CloudWatch through their own log group (OwnLogGroup below): no
      # cloudwatch:PutMetricData permission is needed. The sweep reads these two for the
      # gauges it writes each minute.
      EDGE_METRICS_LINEAGE_CAP  = tostring(var.metrics_lineage_cap)
      EDGE_METRICS_SILENT_AFTER = var.metrics_silent_after
    },
    var.database_host == "" ? {} : { EDGE_DATABASE_HOST = var.database_host },
    var.database_port == "" ? {} : { EDGE_DATABASE_PORT = var.database_port },
    var.database_name == "" ? {} : { EDGE_DATABASE_NAME = var.database_name },
  )
  functions = {
    ingest = {
      description = "SQS ingress envelopes -> staging/mirror (partial batch failures)"
      timeout     = 30
      reserved    = var.ingest_reserved_concurrency
      env         = { EDGE_SPILL_BUCKET = aws_s3_bucket.spill.id }
    }
    api = {
      description = "governance HTTP API (API Gateway HTTP API, JWT authorizer)"
      timeout     = 30
      reserved    = -1
      # one message on the replay queue after an approval starts the replay at once
      env = merge(
        {
          EDGE_REPLAY_QUEUE_URL      = aws_sqs_queue.replay.id
          EDGE_JWT_CLAIM_ORG         = var.jwt_claim_org
          EDGE_JWT_CLAIM_PROJECTS    = var.jwt_claim_projects
          EDGE_JWT_CLAIM_PERMISSIONS = var.jwt_claim_permissions
        },
        var.jwt_secret_arn == "" ? {} : { EDGE_JWT_SECRET_ARN = var.jwt_secret_arn },
        var.jwt_scope_prefix == "" ? {} : { EDGE_JWT_SCOPE_PREFIX = var.jwt_scope_prefix },
      )
    }
    replay = {
      description = "drains approved replay intents chunk by chunk"
      timeout     = 900
      reserved    = 2
      env         = {}
    }
    sweep = {
      description = "backpressure resume, pending control (re-)publication over IoT data plane, events to EventBridge"
      timeout     = 60
      reserved    = 1
      env = {
        EDGE_CONTROL_TRANSPORT = "iot-data"
        EDGE_IOT_DATA_ENDPOINT = var.iot_data_endpoint
        EDGE_EVENT_BUS_NAME    = var.event_bus_name
        EDGE_REPLAY_QUEUE_URL  = aws_sqs_queue.replay.id
      }
    }
  }

  read_database_secret = local.database_secret_is_ssm ? {
    Sid      = "ReadDatabaseSecret"
    Effect   = "Allow"
    Action   = ["ssm:GetParameter"]
    Resource = [var.database_secret_arn]
    } : {
    Sid      = "ReadDatabaseSecret"
    Effect   = "Allow"
    Action   = ["secretsmanager:GetSecretValue"]
    Resource = [var.database_secret_arn]
  }

  extra_statements = {
    ingest = [
      {
        Sid      = "ConsumeIngestQueue"
        Effect   = "Allow"
        Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
        Resource = [aws_sqs_queue.ingest.arn]
      },
      {
        # PutObject: the presigned URLs handed to devices are signed with this role, so the
        # role must be allowed the PUT itself; GetObject: finalize reads the object back.
        Sid      = "SpillObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject"]
        Resource = ["${aws_s3_bucket.spill.arn}/spill/*"]
      },
      {
        # Without ListBucket a missing object reads as 403 (retried) instead of 404
        # (spill_object_missing, recorded).
        Sid       = "SpillObjectsExist"
        Effect    = "Allow"
        Action    = ["s3:ListBucket"]
        Resource  = [aws_s3_bucket.spill.arn]
        Condition = { StringLike = { "s3:prefix" = ["spill/*"] } }
      },
    ]
    api = concat([
      {
        Sid      = "NudgeReplayQueue"
        Effect   = "Allow"
        Action   = ["sqs:SendMessage"]
        Resource = [aws_sqs_queue.replay.arn]
      },
      ], var.jwt_secret_arn == "" ? [] : [
      {
        Sid      = "ReadJwtSecret"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [var.jwt_secret_arn]
      },
    ])
    replay = [
      {
        Sid      = "ConsumeReplayQueue"
        Effect   = "Allow"
        Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
        Resource = [aws_sqs_queue.replay.arn]
      },
    ]
    sweep = [
      {
        Sid      = "PublishControlsOnly"
        Effect   = "Allow"
        Action   = ["iot:Publish"]
        Resource = ["${local.arn_prefix}:topic/${var.topic_slug}/*/sync/ingest/control"]
      },
      {
        Sid      = "FindDataEndpoint"
        Effect   = "Allow"
        Action   = ["iot:DescribeEndpoint"]
        Resource = ["*"]
      },
      {
        Sid      = "ForwardEvents"
        Effect   = "Allow"
        Action   = ["events:PutEvents"]
        Resource = ["arn:${data.aws_partition.current.partition}:events:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:event-bus/${var.event_bus_name}"]
      },
      {
        Sid      = "NudgeReplayQueue"
        Effect   = "Allow"
        Action   = ["sqs:SendMessage"]
        Resource = [aws_sqs_queue.replay.arn]
      },
    ]
  }
}

resource "aws_cloudwatch_log_group" "fn" {
  for_each          = local.functions
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
}

resource "aws_iam_role" "fn" {
  for_each = local.functions
  name     = "${var.name}-${each.key}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

# ENIs in the VPC (the managed policy is the documented minimum for VPC Lambdas).
resource "aws_iam_role_policy_attachment" "vpc" {
  for_each   = local.functions
  role       = aws_iam_role.fn[each.key].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_iam_role_policy" "fn" {
  for_each = local.functions
  name     = "${each.key}-least-privilege"
  role     = aws_iam_role.fn[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid      = "OwnLogGroup"
          Effect   = "Allow"
          Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
          Resource = ["${aws_cloudwatch_log_group.fn[each.key].arn}:*"]
        },
        {
          Sid      = "Tracing"
          Effect   = "Allow"
          Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
          Resource = ["*"]
        },
        local.read_database_secret,
      ],
      local.extra_statements[each.key],
    )
  })
}

resource "aws_lambda_function" "fn" {
  for_each                       = local.functions
  function_name                  = "${var.name}-${each.key}"
  description                    = each.value.description
  role                           = aws_iam_role.fn[each.key].arn
  runtime                        = "provided.al2023"
  architectures                  = ["arm64"]
  handler                        = "bootstrap"
  filename                       = "${var.lambda_artifacts_dir}/${each.key}/bootstrap.zip"
  source_code_hash               = filebase64sha256("${var.lambda_artifacts_dir}/${each.key}/bootstrap.zip")
  memory_size                    = 256
  timeout                        = each.value.timeout
  reserved_concurrent_executions = each.value.reserved

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = var.security_group_ids
  }

  environment {
    variables = merge(local.common_env, each.value.env)
  }

  tracing_config {
    mode = "Active"
  }

  depends_on = [aws_cloudwatch_log_group.fn, aws_iam_role_policy.fn, aws_iam_role_policy_attachment.vpc]
}

resource "aws_lambda_event_source_mapping" "ingest" {
  event_source_arn                   = aws_sqs_queue.ingest.arn
  function_name                      = aws_lambda_function.fn["ingest"].arn
  batch_size                         = 10
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]
}

resource "aws_lambda_event_source_mapping" "replay" {
  event_source_arn = aws_sqs_queue.replay.arn
  function_name    = aws_lambda_function.fn["replay"].arn
  batch_size       = 1
}

resource "aws_cloudwatch_event_rule" "schedule" {
  for_each            = { sweep = "rate(1 minute)", replay = "rate(5 minutes)" }
  name                = "${var.name}-${each.key}"
  description         = each.key == "sweep" ? "resume sweep and control re-sends" : "replay backstop for lost trigger messages"
  schedule_expression = each.value
}

resource "aws_cloudwatch_event_target" "schedule" {
  for_each = aws_cloudwatch_event_rule.schedule
  rule     = each.value.name
  arn      = aws_lambda_function.fn[each.key].arn
}

resource "aws_lambda_permission" "schedule" {
  for_each      = aws_cloudwatch_event_rule.schedule
  statement_id  = "AllowEventBridge"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn[each.key].function_name
  principal     = "events.amazonaws.com"
  source_arn    = each.value.arn
}

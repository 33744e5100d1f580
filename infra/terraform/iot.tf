# One policy for every device; the thing-name policy variable makes it per device. Client id =
# thing name (certificate attached to that thing), publish only to the five device->cloud topics
# under its own root topic, subscribe/receive only its own control topic. Nothing allows
# publishing to any sync/ingest/control topic. Same document as infra/sam/template.yaml, whose
# copy tests/deploy_policy.rs evaluates; scripts/check-terraform.py checks that they agree.
locals {
  arn_prefix    = "arn:${data.aws_partition.current.partition}:iot:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"
  thing         = "$${iot:Connection.Thing.ThingName}"
  device_topics = ["sync/rows/batch", "sync/telemetry/batch", "sync/schema/observe", "sync/ingest/ack", "sync/ingest/request"]
  rule_names = {
    "sync/rows/batch"      = "rows"
    "sync/telemetry/batch" = "telemetry"
    "sync/schema/observe"  = "observe"
    "sync/ingest/ack"      = "ack"
    "sync/ingest/request"  = "request"
  }
}

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

resource "aws_iot_policy" "device" {
  name = "${var.name}-device"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "ConnectAsOwnThing"
        Effect    = "Allow"
        Action    = "iot:Connect"
        Resource  = "${local.arn_prefix}:client/${local.thing}"
        Condition = { Bool = { "iot:Connection.Thing.IsAttached" = "true" } }
      },
      {
        Sid      = "PublishOwnDeviceTopics"
        Effect   = "Allow"
        Action   = "iot:Publish"
        Resource = [for t in local.device_topics : "${local.arn_prefix}:topic/${var.topic_slug}/${local.thing}/${t}"]
      },
      {
        Sid      = "SubscribeOwnControlTopic"
        Effect   = "Allow"
        Action   = "iot:Subscribe"
        Resource = "${local.arn_prefix}:topicfilter/${var.topic_slug}/${local.thing}/sync/ingest/control"
      },
      {
        Sid      = "ReceiveOwnControlTopic"
        Effect   = "Allow"
        Action   = "iot:Receive"
        Resource = "${local.arn_prefix}:topic/${var.topic_slug}/${local.thing}/sync/ingest/control"
      },
    ]
  })
}

# The rule engine forwards each message as the ingress envelope of cloud.md section 1; base64
# keeps any payload intact for the worker's named rejections.
resource "aws_iot_topic_rule" "device_topic" {
  for_each    = local.rule_names
  name        = replace("${var.name}_${each.value}", "-", "_")
  description = "${each.key} -> ingest queue"
  enabled     = true
  sql_version = "2016-03-23"
  sql         = "SELECT encode(*, 'base64') AS payload_b64, topic() AS topic, clientid() AS client_id, principal() AS principal, timestamp() AS received_at_ms FROM '${var.topic_slug}/+/${each.key}'"

  sqs {
    queue_url  = aws_sqs_queue.ingest.id
    role_arn   = aws_iam_role.iot_rule.arn
    use_base64 = false
  }

  error_action {
    sqs {
      queue_url  = aws_sqs_queue.ingest_dlq.id
      role_arn   = aws_iam_role.iot_rule.arn
      use_base64 = false
    }
  }
}

resource "aws_iam_role" "iot_rule" {
  name = "${var.name}-iot-rule"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "iot.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = data.aws_caller_identity.current.account_id } }
    }]
  })
}

resource "aws_iam_role_policy" "iot_rule" {
  name = "send-to-ingest-queues"
  role = aws_iam_role.iot_rule.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = "sqs:SendMessage"
      Resource = [aws_sqs_queue.ingest.arn, aws_sqs_queue.ingest_dlq.arn]
    }]
  })
}

# Visibility timeout = 6 x the ingest timeout (AWS guidance for Lambda event sources).
resource "aws_sqs_queue" "ingest" {
  name                       = "${var.name}-ingest"
  visibility_timeout_seconds = 180
  message_retention_seconds  = 345600
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.ingest_dlq.arn
    maxReceiveCount     = 5
  })
}

resource "aws_sqs_queue" "ingest_dlq" {
  name                      = "${var.name}-ingest-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "replay" {
  name                       = "${var.name}-replay"
  visibility_timeout_seconds = 5400
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.replay_dlq.arn
    maxReceiveCount     = 5
  })
}

resource "aws_sqs_queue" "replay_dlq" {
  name                      = "${var.name}-replay-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

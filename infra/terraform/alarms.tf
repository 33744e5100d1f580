locals {
  alarm_actions = var.alarm_topic_arn == "" ? [] : [var.alarm_topic_arn]
  dlq_alarms = {
    ingest = aws_sqs_queue.ingest_dlq.name
    replay = aws_sqs_queue.replay_dlq.name
  }
}

resource "aws_cloudwatch_metric_alarm" "dlq_depth" {
  for_each            = local.dlq_alarms
  alarm_name          = "${var.name}-${each.key}-dlq-depth"
  alarm_description   = "Messages parked in the ${each.key} DLQ; inspect and redrive."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "ingest_age" {
  alarm_name          = "${var.name}-ingest-queue-age"
  alarm_description   = "Ingest is falling behind (oldest envelope older than 10 minutes)."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.ingest.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  threshold           = 600
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  for_each            = aws_lambda_function.fn
  alarm_name          = "${var.name}-${each.key}-errors"
  alarm_description   = "${each.key} Lambda invocation errors"
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = each.value.function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

# Sync health (observability.md §2, §5): the metrics the Lambdas print as EMF lines in namespace
# EdgeSync (the sweep writes the gauges every minute). Each gauge line carries the dimension set
# [] besides its labels, so these alarms name no dimensions: they watch every project at once,
# Maximum = the worst project. scripts/check-observability.py keeps their properties equal to the
# spec's and to the SAM template's.
resource "aws_cloudwatch_metric_alarm" "devices_silent" {
  alarm_name          = "${var.name}-devices-silent"
  alarm_description   = "A device stopped syncing: its newest batch is older than metrics_silent_after (observability.md §5). Missing data = the sweep is not writing its gauges, which is as bad. See docs/operations.md \"Silent device\"."
  namespace           = "EdgeSync"
  metric_name         = "edge_devices_silent"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
}

# Missing data is notBreaching for the next two: a sweep that stopped writing is already the
# devices_silent alarm's (breaching) case, and one cause should raise one alarm.
resource "aws_cloudwatch_metric_alarm" "dead_letters_open" {
  alarm_name          = "${var.name}-dead-letters-open"
  alarm_description   = "Messages parked as dead letters and not resolved (edge_dead_letters_open > 0). Fix the cause, then edge-cloud dead-letters retry (docs/operations.md \"Dead letters\")."
  namespace           = "EdgeSync"
  metric_name         = "edge_dead_letters_open"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "replay_intents_failed" {
  alarm_name          = "${var.name}-replay-intents-failed"
  alarm_description   = "A replay intent failed and awaits an operator (edge_replay_intents_failed > 0, any project). See docs/operations.md \"Replay failed\"."
  namespace           = "EdgeSync"
  metric_name         = "edge_replay_intents_failed"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

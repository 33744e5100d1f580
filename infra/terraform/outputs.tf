output "device_policy_name" {
  description = "Attach to every device certificate (edge-cloud devices provision-aws --policy-name)."
  value       = aws_iot_policy.device.name
}

output "api_url" {
  description = "Base URL of the governance API."
  value       = aws_apigatewayv2_stage.default.invoke_url
}

output "ingest_queue_url" {
  value = aws_sqs_queue.ingest.id
}

output "ingest_dead_letter_queue_url" {
  value = aws_sqs_queue.ingest_dlq.id
}

output "replay_queue_url" {
  value = aws_sqs_queue.replay.id
}

output "spill_bucket_name" {
  value = aws_s3_bucket.spill.id
}

output "topic_slug" {
  value = var.topic_slug
}

output "function_names" {
  value = { for k, f in aws_lambda_function.fn : k => f.function_name }
}

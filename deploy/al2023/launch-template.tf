# EKS managed node group launch template for AL2023 nodes with imds-snoop installed at boot
# (user-data.mime next to this file). metadata_options as in the AL2 -> AL2023 migration
# guides:
#   http_tokens = "required"         IMDSv2 only (AL2023's default). While you hunt IMDSv1
#                                    callers with imds-snoop, "optional" keeps them working
#                                    and every one of them is logged as imdsv1(!).
#   http_put_response_hop_limit = 2  pods in their own network namespace reach the token
#                                    endpoint (1 stops the PUT response at the pod's veth);
#                                    keep 1 only if no pod may use the node's role.

variable "imds_http_tokens" {
  description = "\"required\" (IMDSv2 only) or \"optional\" (IMDSv1 allowed, logged by imds-snoop)"
  type        = string
  default     = "required"
  validation {
    condition     = contains(["required", "optional"], var.imds_http_tokens)
    error_message = "imds_http_tokens must be \"required\" or \"optional\"."
  }
}

resource "aws_launch_template" "al2023_nodes" {
  name_prefix = "eks-al2023-imds-snoop-"
  image_id    = data.aws_ssm_parameter.al2023_ami.value

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = var.imds_http_tokens
    http_put_response_hop_limit = 2
    http_protocol_ipv6          = "disabled"
    instance_metadata_tags      = "disabled"
  }

  # NodeConfig (nodeadm) + the imds-snoop install script, MIME multi-part.
  user_data = filebase64("${path.module}/user-data.mime")

  tag_specifications {
    resource_type = "instance"
    tags = {
      "imds-snoop" = "installed"
    }
  }
}

# The EKS-optimized AL2023 AMI for the cluster's Kubernetes version (use .../arm64/... for
# Graviton instance types).
data "aws_ssm_parameter" "al2023_ami" {
  name = "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/recommended/image_id"
}

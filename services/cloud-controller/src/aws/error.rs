//! EC2 and EKS errors: the code AWS gave, and whether a retry can help.
use super::*;

/// An EC2 error with its code, classified.
pub(super) fn aws_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    what: &str,
    e: SdkError<E, HttpResponse>,
) -> PhaseError {
    let code = e.code().unwrap_or("").to_string();
    let msg = e.message().map(str::to_string).unwrap_or_else(|| format!("{e:?}"));
    let server_error = e.raw_response().is_some_and(|r| r.status().as_u16() >= 500);
    let retryable = server_error
        || matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_))
        || matches!(
            code.as_str(),
            "RequestLimitExceeded"
                | "Throttling"
                | "ThrottlingException"
                | "TooManyRequestsException"
                | "DependencyViolation"
                | "InternalError"
                | "Unavailable"
                | "ServerException"
                | "ServiceUnavailableException"
                | "ServiceUnavailable"
        )
        // Right after we create something, EC2 may not know its id yet (eventual consistency);
        // delete paths treat "not found" as done before they get here. Not for what the user
        // names (an AMI, an instance type): that is a permanent mistake.
        || [
            "InvalidVpcID.NotFound",
            "InvalidSubnetID.NotFound",
            "InvalidGroup.NotFound",
            "InvalidInternetGatewayID.NotFound",
            "InvalidRouteTableID.NotFound",
            "InvalidKeyPair.NotFound",
            "InvalidInstanceID.NotFound",
        ]
        .contains(&code.as_str())
        // A create answering "exists already" although our lookup by tag just missed it (seen
        // under load against moto): the retried phase finds it by its tags and adopts it.
        || code.ends_with(".Duplicate")
        || code.ends_with(".Conflict");
    PhaseError::with_source(retryable, format!("{what}: {code} {msg}"), e)
}

pub(super) fn code_of<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> &str {
    e.code().unwrap_or("")
}

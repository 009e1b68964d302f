//! EKS bearer tokens and kubeconfigs, as `aws eks get-token` makes them: the token is
//! `k8s-aws-v1.` + base64url of a presigned STS `GetCallerIdentity` URL whose signature covers
//! the `x-k8s-aws-id: <cluster>` header. The API server's authenticator calls that URL to learn
//! who we are. Tokens live 15 minutes, so `switch` asks for a fresh one every time.
use aws_sdk_ec2::config::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use std::time::{Duration, SystemTime};

pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
const CLUSTER_HEADER: &str = "x-k8s-aws-id";

/// The presigned URL (valid 60 s for the authenticator, like the AWS CLI's).
pub fn presigned_url(creds: &Credentials, region: &str, cluster: &str, now: SystemTime) -> Result<String, String> {
    let identity: Identity = creds.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(60));
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    let url = format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let signable =
        SignableRequest::new("GET", url.as_str(), [(CLUSTER_HEADER, cluster)].into_iter(), SignableBody::Bytes(&[]))
            .map_err(|e| format!("presigning: {e}"))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| format!("presigning: {e}"))?.into_parts();
    let mut req = http::Request::builder().uri(&url).body(()).map_err(|e| e.to_string())?;
    instructions.apply_to_request_http1x(&mut req);
    Ok(req.uri().to_string())
}

pub fn token(creds: &Credentials, region: &str, cluster: &str, now: SystemTime) -> Result<String, String> {
    let url = presigned_url(creds, region, cluster, now)?;
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(url: &str) -> std::collections::BTreeMap<String, String> {
        url.split_once('?')
            .unwrap()
            .1
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn token_is_a_presigned_sts_url_bound_to_the_cluster() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("session".into()), None, "test");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t = token(&creds, "eu-west-1", "prod", now).unwrap();
        let b64 = t.strip_prefix(TOKEN_PREFIX).expect("prefix");
        assert!(!b64.contains('=') && !b64.contains('+') && !b64.contains('/'), "base64url without padding");
        let url = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap();
        assert!(url.starts_with("https://sts.eu-west-1.amazonaws.com/?"), "{url}");
        let q = query(&url);
        assert_eq!(q["Action"], "GetCallerIdentity");
        assert_eq!(q["Version"], "2011-06-15");
        assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(q["X-Amz-Expires"], "60");
        assert_eq!(q["X-Amz-Date"], "20231114T221320Z");
        assert_eq!(q["X-Amz-Credential"], "AKIDEXAMPLE%2F20231114%2Feu-west-1%2Fsts%2Faws4_request");
        assert_eq!(q["X-Amz-SignedHeaders"], "host%3Bx-k8s-aws-id");
        assert_eq!(q["X-Amz-Security-Token"], "session");
        assert_eq!(q["X-Amz-Signature"].len(), 64);
        // The signature covers the cluster name: another cluster, another token.
        assert_ne!(t, token(&creds, "eu-west-1", "staging", now).unwrap());
    }
}

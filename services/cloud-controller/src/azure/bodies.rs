//! The JSON bodies of the ARM resources ksctl makes: NSGs from the shared port matrix, the VNet,
//! public IPs, NICs, VMs, AKS clusters and their node pool.
use super::{POOL, SUBNET_CIDR, VNET_CIDR};
use crate::firewall::{self, Proto, Source};
use ksctl_core::spec::Cni;
use serde_json::{Value, json};

/// An NSG's security rules for a role, from the shared port matrix: inbound allows with
/// priorities from 100, "the network" being the VNet.
pub fn security_rules(rules: &[firewall::Rule]) -> Vec<Value> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ports = if r.from_port == r.to_port {
                r.from_port.to_string()
            } else {
                format!("{}-{}", r.from_port, r.to_port)
            };
            json!({
                "name": format!("ksctl-{}-{}-{}", r.proto.as_str(), r.from_port, r.to_port),
                "properties": {
                    "description": r.description,
                    "protocol": match r.proto { Proto::Tcp => "Tcp", Proto::Udp => "Udp" },
                    "sourcePortRange": "*",
                    "destinationPortRange": ports,
                    "sourceAddressPrefix": match r.source { Source::Anywhere => "*", Source::Network => VNET_CIDR },
                    "destinationAddressPrefix": "*",
                    "access": "Allow",
                    "priority": 100 + i as i64,
                    "direction": "Inbound",
                }
            })
        })
        .collect()
}

/// A VM: Ubuntu 24.04 LTS, SSH key only, the OS disk and NIC deleted with the VM.
pub fn vm(location: &str, size: &str, nic_id: &str, computer_name: &str, public_key: &str, tags: &Value) -> Value {
    json!({
        "location": location,
        "tags": tags,
        "properties": {
            "hardwareProfile": {"vmSize": size},
            "storageProfile": {
                "imageReference": {
                    "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"
                },
                "osDisk": {
                    "createOption": "FromImage",
                    "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
                    "deleteOption": "Delete"
                }
            },
            "osProfile": {
                "computerName": computer_name,
                "adminUsername": "ubuntu",
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{"path": "/home/ubuntu/.ssh/authorized_keys", "keyData": public_key}]}
                }
            },
            "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": true}}]}
        }
    })
}

/// An AKS cluster: one system pool of `nodes`, the CNI's network plugin.
pub fn aks(location: &str, name: &str, version: &str, nodes: u32, size: &str, cni: Option<Cni>, tags: &Value) -> Value {
    let plugin = match cni {
        // AKS runs Cilium on Azure CNI; everything else gets kubenet (flannel-like routing).
        Some(Cni::Cilium) => "azure",
        _ => "kubenet",
    };
    json!({
        "location": location,
        "tags": tags,
        "identity": {"type": "SystemAssigned"},
        "properties": {
            "kubernetesVersion": version,
            "dnsPrefix": name,
            "enableRBAC": true,
            "agentPoolProfiles": [{
                "name": POOL, "count": nodes, "vmSize": size, "mode": "System", "osType": "Linux",
                "type": "VirtualMachineScaleSets"
            }],
            "networkProfile": {"networkPlugin": plugin}
        }
    })
}

/// A static public IP address (Standard SKU, IPv4).
pub fn public_ip(location: &str, tags: &Value) -> Value {
    json!({
        "location": location, "tags": tags, "sku": {"name": "Standard"},
        "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"}
    })
}

/// A NIC in `subnet` with the public IP `pip`, behind the role's NSG.
pub fn nic(location: &str, tags: &Value, nsg: &str, subnet: &str, pip: &str) -> Value {
    json!({
        "location": location, "tags": tags,
        "properties": {
            "networkSecurityGroup": {"id": nsg},
            "ipConfigurations": [{"name": "primary", "properties": {
                "subnet": {"id": subnet}, "publicIPAddress": {"id": pip},
                "privateIPAllocationMethod": "Dynamic"
            }}]
        }
    })
}

/// A role's NSG with its rules from the port matrix.
pub fn nsg(location: &str, tags: &Value, rules: &[firewall::Rule]) -> Value {
    json!({"location": location, "tags": tags, "properties": {"securityRules": security_rules(rules)}})
}

/// The cluster's VNet with its one subnet for the nodes.
pub fn vnet(location: &str, tags: &Value) -> Value {
    json!({"location": location, "tags": tags, "properties": {
        "addressSpace": {"addressPrefixes": [VNET_CIDR]},
        "subnets": [{"name": "nodes", "properties": {"addressPrefix": SUBNET_CIDR}}]}})
}

/// The AKS node pool resized to `count`.
pub fn pool_size(count: u32, size: &str) -> Value {
    json!({"properties": {"count": count, "vmSize": size, "mode": "System", "osType": "Linux",
        "type": "VirtualMachineScaleSets"}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use ksctl_core::records::Role;
    use ksctl_core::spec::Distro;

    #[test]
    fn nsg_rules_follow_the_port_matrix() {
        let r = security_rules(&firewall::rules(Role::ControlPlane, Some(Distro::K3s), None));
        let api = r.iter().find(|x| x["properties"]["destinationPortRange"] == "6443").unwrap();
        assert_eq!(api["properties"]["sourceAddressPrefix"], VNET_CIDR, "the API only from the VNet");
        let nodeports = r.iter().find(|x| x["properties"]["destinationPortRange"] == "30000-32767").unwrap();
        assert_eq!(nodeports["properties"]["sourceAddressPrefix"], "*");
        let prios: Vec<i64> = r.iter().map(|x| x["properties"]["priority"].as_i64().unwrap()).collect();
        assert!(prios.windows(2).all(|w| w[0] < w[1]) && prios[0] == 100, "unique priorities: {prios:?}");
        let vxlan = r.iter().find(|x| x["properties"]["protocol"] == "Udp").unwrap();
        assert_eq!(vxlan["properties"]["destinationPortRange"], "8472");
    }

    #[test]
    fn aks_network_plugin_from_the_cni() {
        let t = json!({});
        assert_eq!(aks("l", "n", "1.31", 2, "s", None, &t)["properties"]["networkProfile"]["networkPlugin"], "kubenet");
        assert_eq!(
            aks("l", "n", "1.31", 2, "s", Some(Cni::Cilium), &t)["properties"]["networkProfile"]["networkPlugin"],
            "azure"
        );
        assert_eq!(aks("l", "n", "1.31", 3, "s", None, &t)["properties"]["agentPoolProfiles"][0]["count"], 3);
    }
}

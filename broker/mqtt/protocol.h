// MQTT protocol constants shaped like the OASIS specs (3.1.1 and 5.0):
// packet types, reason codes, property identifiers. Pure data, no state;
// safe to use from any thread.
#pragma once

#include <cstdint>
#include <string_view>

namespace fmq::mqtt {

enum class Version : uint8_t { kV311 = 4, kV5 = 5 };

// [MQTT-2.1.2] control packet types.
enum class PacketType : uint8_t {
  kReserved = 0,
  kConnect = 1,
  kConnack = 2,
  kPublish = 3,
  kPuback = 4,
  kPubrec = 5,
  kPubrel = 6,
  kPubcomp = 7,
  kSubscribe = 8,
  kSuback = 9,
  kUnsubscribe = 10,
  kUnsuback = 11,
  kPingreq = 12,
  kPingresp = 13,
  kDisconnect = 14,
  kAuth = 15,
};

std::string_view PacketTypeName(PacketType t);

// MQTT 5 reason codes [MQTT-2.4]. On the packet path every error is one of
// these; turning it into v3.1.1 wire bytes happens in encode.cc only.
enum class ReasonCode : uint8_t {
  kSuccess = 0x00,  // also Normal disconnection, Granted QoS 0
  kGrantedQos1 = 0x01,
  kGrantedQos2 = 0x02,
  kDisconnectWithWill = 0x04,
  kNoMatchingSubscribers = 0x10,
  kNoSubscriptionExisted = 0x11,
  kContinueAuthentication = 0x18,
  kReauthenticate = 0x19,
  kUnspecifiedError = 0x80,
  kMalformedPacket = 0x81,
  kProtocolError = 0x82,
  kImplementationSpecificError = 0x83,
  kUnsupportedProtocolVersion = 0x84,
  kClientIdentifierNotValid = 0x85,
  kBadUserNameOrPassword = 0x86,
  kNotAuthorized = 0x87,
  kServerUnavailable = 0x88,
  kServerBusy = 0x89,
  kBanned = 0x8A,
  kServerShuttingDown = 0x8B,
  kBadAuthenticationMethod = 0x8C,
  kKeepAliveTimeout = 0x8D,
  kSessionTakenOver = 0x8E,
  kTopicFilterInvalid = 0x8F,
  kTopicNameInvalid = 0x90,
  kPacketIdentifierInUse = 0x91,
  kPacketIdentifierNotFound = 0x92,
  kReceiveMaximumExceeded = 0x93,
  kTopicAliasInvalid = 0x94,
  kPacketTooLarge = 0x95,
  kMessageRateTooHigh = 0x96,
  kQuotaExceeded = 0x97,
  kAdministrativeAction = 0x98,
  kPayloadFormatInvalid = 0x99,
  kRetainNotSupported = 0x9A,
  kQosNotSupported = 0x9B,
  kUseAnotherServer = 0x9C,
  kServerMoved = 0x9D,
  kSharedSubscriptionsNotSupported = 0x9E,
  kConnectionRateExceeded = 0x9F,
  kMaximumConnectTime = 0xA0,
  kSubscriptionIdentifiersNotSupported = 0xA1,
  kWildcardSubscriptionsNotSupported = 0xA2,
};

std::string_view ReasonName(ReasonCode rc);
inline bool IsError(ReasonCode rc) { return static_cast<uint8_t>(rc) >= 0x80; }

// MQTT 3.1.1 CONNACK return codes [MQTT-3.2.2.3].
enum class ConnackV3 : uint8_t {
  kAccepted = 0,
  kUnacceptableProtocolVersion = 1,
  kIdentifierRejected = 2,
  kServerUnavailable = 3,
  kBadUserNameOrPassword = 4,
  kNotAuthorized = 5,
};

// MQTT 5 property identifiers [MQTT-2.2.2.2].
enum class PropertyId : uint8_t {
  kPayloadFormatIndicator = 0x01,
  kMessageExpiryInterval = 0x02,
  kContentType = 0x03,
  kResponseTopic = 0x08,
  kCorrelationData = 0x09,
  kSubscriptionIdentifier = 0x0B,
  kSessionExpiryInterval = 0x11,
  kAssignedClientIdentifier = 0x12,
  kServerKeepAlive = 0x13,
  kAuthenticationMethod = 0x15,
  kAuthenticationData = 0x16,
  kRequestProblemInformation = 0x17,
  kWillDelayInterval = 0x18,
  kRequestResponseInformation = 0x19,
  kResponseInformation = 0x1A,
  kServerReference = 0x1C,
  kReasonString = 0x1F,
  kReceiveMaximum = 0x21,
  kTopicAliasMaximum = 0x22,
  kTopicAlias = 0x23,
  kMaximumQos = 0x24,
  kRetainAvailable = 0x25,
  kUserProperty = 0x26,
  kMaximumPacketSize = 0x27,
  kWildcardSubscriptionAvailable = 0x28,
  kSubscriptionIdentifierAvailable = 0x29,
  kSharedSubscriptionAvailable = 0x2A,
};

// Where a property block sits; selects the allowed property set.
enum class PropertyContext : uint8_t {
  kConnect,
  kConnack,
  kPublish,
  kWill,
  kPubAck,  // PUBACK, PUBREC, PUBREL, PUBCOMP
  kSubscribe,
  kSuback,
  kUnsubscribe,
  kUnsuback,
  kDisconnect,
  kAuth,
};

// Fixed limits from the specs.
inline constexpr uint32_t kMaxRemainingLength = 268'435'455;  // [MQTT-2.2.3]
inline constexpr uint32_t kMaxVarint = 268'435'455;
inline constexpr uint32_t kMaxSubscriptionId = 268'435'455;
inline constexpr uint16_t kMaxStringLength = 65535;  // [MQTT-1.5.4]

// Subscription option bits [MQTT-3.8.3.1].
inline constexpr uint8_t kSubOptQosMask = 0x03;
inline constexpr uint8_t kSubOptNoLocal = 0x04;
inline constexpr uint8_t kSubOptRetainAsPublished = 0x08;
inline constexpr uint8_t kSubOptRetainHandlingShift = 4;
inline constexpr uint8_t kSubOptReservedMask = 0xC0;

}  // namespace fmq::mqtt

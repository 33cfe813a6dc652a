package flmsg

// The verifier's view of wire/schema/*.fbs (≈r1.7 superset layout): one
// fieldSpec per vtable slot, in slot order. Tests check these against the
// generated code in wire/fbs by round-tripping every field.

var featureMapSpec = &tableSpec{name: "FeatureMap", fields: []fieldSpec{
	str("weight_fullname"), // 0
	vec("data", 4),         // 1 [float]
}}

var compressFeatureMapSpec = &tableSpec{name: "CompressFeatureMap", fields: []fieldSpec{
	str("weight_fullname"),  // 0
	vec("compress_data", 1), // 1 [int8]
	scalar("min_val", 4),    // 2
	scalar("max_val", 4),    // 3
}}

var requestFLJobSpec = &tableSpec{name: "RequestFLJob", fields: []fieldSpec{
	str("fl_name"),                    // 0
	str("fl_id"),                      // 1
	scalar("iteration", 4),            // 2
	scalar("data_size", 4),            // 3
	str("timestamp"),                  // 4
	vec("sign_data", 1),               // 5
	str("key_attestation"),            // 6
	str("equip_cert"),                 // 7
	str("equip_ca_cert"),              // 8
	str("root_cert"),                  // 9
	vec("download_compress_types", 1), // 10
}}

var requestUpdateModelSpec = &tableSpec{name: "RequestUpdateModel", fields: []fieldSpec{
	str("fl_name"),                        // 0
	str("fl_id"),                          // 1
	scalar("iteration", 4),                // 2
	tblVec("feature_map", featureMapSpec), // 3
	str("timestamp"),                      // 4
	vec("signature", 1),                   // 5
	scalar("upload_loss", 4),              // 6
	scalar("sign", 4),                     // 7
	vec("index_array", 4),                 // 8
	tblVec("compress_feature_map", compressFeatureMapSpec), // 9
	scalar("upload_compress_type", 1),                      // 10
	scalar("upload_sparse_rate", 4),                        // 11
	strVec("name_vec"),                                     // 12
}}

var requestGetModelSpec = &tableSpec{name: "RequestGetModel", fields: []fieldSpec{
	str("fl_name"),                    // 0
	scalar("iteration", 4),            // 1
	str("timestamp"),                  // 2
	vec("download_compress_types", 1), // 3
}}

var earlyStopSpec = &tableSpec{name: "EarlyStop", fields: []fieldSpec{
	scalar("early_stop_type", 1), // 0
	scalar("weight", 4),          // 1
	scalar("rounds", 4),          // 2
}}

var aggregationSpec = &tableSpec{name: "Aggregation", fields: []fieldSpec{
	scalar("type", 1), // 0
	vec("weights", 4), // 1
}}

var pwParamsSpec = &tableSpec{name: "PWParams", fields: []fieldSpec{
	scalar("t", 4),  // 0
	vec("p", 1),     // 1
	scalar("g", 4),  // 2
	vec("prime", 1), // 3
}}

var dpParamsSpec = &tableSpec{name: "DPParams", fields: []fieldSpec{
	scalar("dp_eps", 4),       // 0
	scalar("dp_delta", 4),     // 1
	scalar("dp_norm_clip", 4), // 2
}}

var dsParamsSpec = &tableSpec{name: "DSParams", fields: []fieldSpec{
	scalar("sign_k", 4),         // 0
	scalar("sign_eps", 4),       // 1
	scalar("sign_thr_ratio", 4), // 2
	scalar("sign_global_lr", 4), // 3
	scalar("sign_dim_out", 4),   // 4
}}

// cipherPublicParamsSpec is the ≈r1.7 nested layout. A server configured for
// r1.5's flat layout would fail this check; fedcluster leaves cipher unset.
var cipherPublicParamsSpec = &tableSpec{name: "CipherPublicParams", fields: []fieldSpec{
	str("encrypt_type"),            // 0
	tbl("pw_params", pwParamsSpec), // 1
	tbl("dp_params", dpParamsSpec), // 2
	tbl("ds_params", dsParamsSpec), // 3
}}

var flPlanSpec = &tableSpec{name: "FLPlan", fields: []fieldSpec{
	str("server_mode"),                    // 0
	str("fl_name"),                        // 1
	scalar("iterations", 4),               // 2
	scalar("epochs", 4),                   // 3
	tbl("early_stop", earlyStopSpec),      // 4
	scalar("mini_batch", 4),               // 5
	scalar("shuffle", 1),                  // 6
	scalar("lr", 4),                       // 7
	tbl("aggregation", aggregationSpec),   // 8
	vec("metrics", 1),                     // 9
	tbl("cipher", cipherPublicParamsSpec), // 10
}}

var responseFLJobSpec = &tableSpec{name: "ResponseFLJob", fields: []fieldSpec{
	scalar("retcode", 4),                                   // 0
	str("reason"),                                          // 1
	scalar("iteration", 4),                                 // 2
	scalar("is_selected", 1),                               // 3
	str("next_req_time"),                                   // 4
	tbl("fl_plan_config", flPlanSpec),                      // 5
	tblVec("feature_map", featureMapSpec),                  // 6
	str("timestamp"),                                       // 7
	scalar("upload_compress_type", 1),                      // 8
	scalar("upload_sparse_rate", 4),                        // 9
	scalar("download_compress_type", 1),                    // 10
	tblVec("compress_feature_map", compressFeatureMapSpec), // 11
}}

var responseUpdateModelSpec = &tableSpec{name: "ResponseUpdateModel", fields: []fieldSpec{
	scalar("retcode", 4),                  // 0
	str("reason"),                         // 1
	tblVec("feature_map", featureMapSpec), // 2
	str("next_req_time"),                  // 3
	str("timestamp"),                      // 4
}}

var responseGetModelSpec = &tableSpec{name: "ResponseGetModel", fields: []fieldSpec{
	scalar("retcode", 4),                                   // 0
	str("reason"),                                          // 1
	scalar("iteration", 4),                                 // 2
	tblVec("feature_map", featureMapSpec),                  // 3
	str("timestamp"),                                       // 4
	scalar("download_compress_type", 1),                    // 5
	tblVec("compress_feature_map", compressFeatureMapSpec), // 6
}}

// Slots read by the decoders and written by the builders.
const (
	slotFeatureMapName = 0
	slotFeatureMapData = 1

	slotReqFLJobFLName                = 0
	slotReqFLJobFLID                  = 1
	slotReqFLJobIteration             = 2
	slotReqFLJobDataSize              = 3
	slotReqFLJobTimestamp             = 4
	slotReqFLJobSignData              = 5
	slotReqFLJobDownloadCompressTypes = 10

	slotReqUpdateFLName             = 0
	slotReqUpdateFLID               = 1
	slotReqUpdateIteration          = 2
	slotReqUpdateFeatureMap         = 3
	slotReqUpdateTimestamp          = 4
	slotReqUpdateSignature          = 5
	slotReqUpdateUploadLoss         = 6
	slotReqUpdateSign               = 7
	slotReqUpdateCompressFeatureMap = 9
	slotReqUpdateUploadCompressType = 10
	slotReqUpdateUploadSparseRate   = 11

	slotReqGetFLName                = 0
	slotReqGetIteration             = 1
	slotReqGetTimestamp             = 2
	slotReqGetDownloadCompressTypes = 3

	slotPlanServerMode = 0
	slotPlanFLName     = 1
	slotPlanIterations = 2
	slotPlanEpochs     = 3
	slotPlanMiniBatch  = 5
	slotPlanShuffle    = 6
	slotPlanLR         = 7
	slotPlanCipher     = 10

	slotRspFLJobRetcode     = 0
	slotRspFLJobReason      = 1
	slotRspFLJobIteration   = 2
	slotRspFLJobIsSelected  = 3
	slotRspFLJobNextReqTime = 4
	slotRspFLJobPlan        = 5
	slotRspFLJobFeatureMap  = 6
	slotRspFLJobTimestamp   = 7

	slotRspUpdateRetcode     = 0
	slotRspUpdateReason      = 1
	slotRspUpdateFeatureMap  = 2
	slotRspUpdateNextReqTime = 3
	slotRspUpdateTimestamp   = 4

	slotRspGetRetcode    = 0
	slotRspGetReason     = 1
	slotRspGetIteration  = 2
	slotRspGetFeatureMap = 3
	slotRspGetTimestamp  = 4
)
